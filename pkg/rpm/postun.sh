# %postun. $1: 0 on erase, 1 or more on upgrade.
# On upgrade the new binary runs only in what was running (try-restart
# starts nothing); the walhook user stays on erase, as on Debian: files
# it owned elsewhere must not pass to a later user of its id.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart walhook.service 'walhook@*.service' || :
    fi
fi
# The package does not own /etc/walhook (Cargo.toml says why): on erase it
# goes when empty, as on a Debian purge; password files the administrator
# put there are theirs to remove.
if [ "$1" -eq 0 ] && [ -d /etc/walhook ]; then
    rmdir /etc/walhook 2>/dev/null || :
fi
