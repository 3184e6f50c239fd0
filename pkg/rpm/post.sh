# %post. $1: 1 on install, 2 or more on upgrade.
# /etc/walhook's password files get their modes whether or not systemd
# runs now (a container, an image build), as the .deb's postinst does.
if command -v systemd-tmpfiles >/dev/null 2>&1; then
    systemd-tmpfiles --create walhook.conf || :
fi
# Never enabled or started here (no preset either): the config must name a
# database and `walhook setup` must have run first.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
fi
