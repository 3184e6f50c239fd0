# %preun. $1: 0 on erase, 1 or more on upgrade.
# On erase only: stop and disable the service and every instance
# (walhook@NAME), so no unit is left pointing at a removed binary.
if [ "$1" -eq 0 ] && [ -d /run/systemd/system ]; then
    systemctl --no-reload disable --now walhook.service >/dev/null 2>&1 || :
    for link in /etc/systemd/system/*.wants/walhook@*.service; do
        [ -L "$link" ] && systemctl --no-reload disable "${link##*/}" >/dev/null 2>&1
    done
    systemctl stop 'walhook@*.service' >/dev/null 2>&1 || :
fi
:
