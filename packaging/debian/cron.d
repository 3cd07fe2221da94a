# longconn where systemd does not run: the packaged form of
# packaging/cron/longconn (see README.Debian). Every line is guarded: idle
# where systemd runs (longconn-reader.timer does the job there), silent once
# the package is removed (this conffile stays until purge), and the reader
# runs only while something is pinned at the default pin dir. Cron runs once
# a minute, so each run does eleven 5-second cycles; flock -n keeps one loop.
@reboot root [ ! -d /run/systemd/system ] && [ -x /usr/sbin/longconn-pin ] && /usr/sbin/longconn-pin --group longconn
* * * * * root [ ! -d /run/systemd/system ] && [ -d /sys/fs/bpf/longconn ] && [ -x /usr/bin/longconn-reader ] && flock -n /run/longconn-cron.lock sh -c 'for i in 1 2 3 4 5 6 7 8 9 10 11; do [ -x /usr/bin/longconn-reader ] || exit 0; /usr/bin/longconn-reader collect; sleep 5; done'
