package rootfs

// assembleScript runs as root of a new user namespace (identity-mapped),
// in new mount, PID, network, UTS and IPC namespaces:
//
//	$1 root  $2 directory of the numbered .debs  $3 binfmt_misc registration or ""
//	$4 essential .debs  $5 the other .debs (both in the lock's order; one
//	batch a line, split where a package pre-depends on one before it)  $6 the architecture
//
// The steps are mmdebstrap's (FIELD-GUIDE §5.1): extract the essential set
// with dpkg-deb | tar --keep-directory-symlink, install it with the root's
// own dpkg --force-depends, install the rest, clean up (§5.4
// cleanup/reproducible, plus SSH host keys).
const assembleScript = `set -eu
R=$1 W=$2 BINFMT=$3 ESS=$4 REST=$5 ARCH=$6
` + binfmtScript + `hostname kiln
mkdir -p "$R/var/lib/dpkg"
# dpkg's architecture list, as mmdebstrap writes it.
echo "$ARCH" > "$R/var/lib/dpkg/arch"
for d in $ESS; do
	dpkg-deb --fsys-tarfile "$W/$d" | tar -C "$R" --keep-directory-symlink --extract --file -
done
mkdir -p "$R/dev" "$R/proc" "$R/sys" "$R/tmp" "$R/kiln-debs"
chmod 1777 "$R/tmp"
mount -t proc proc "$R/proc"
for n in null zero full random urandom tty; do
	: > "$R/dev/$n"
	mount --bind "/dev/$n" "$R/dev/$n"
done
mount --bind "$W" "$R/kiln-debs"
printf '#!/bin/sh\nexit 101\n' > "$R/usr/sbin/policy-rc.d"
chmod 755 "$R/usr/sbin/policy-rc.d"
debs() { for d in "$@"; do printf '/kiln-debs/%s ' "$d"; done; }
# --force-unsafe-io: dpkg does not fsync each file it unpacks. The tree is
# an intermediate a crash throws away (the store keeps only finished
# entries, renamed in whole); mmdebstrap gets the same from its eatmydata hook.
echo "kiln: dpkg --install --force-depends (essential)"
chroot "$R" dpkg --force-unsafe-io --install --force-depends --abort-after=1 $(debs $ESS)
if [ -n "$REST" ]; then
	# Every batch but the last is unpacked and configured as far as it
	# can be (a package may depend on one a later batch brings: it is
	# configured then); the last is installed and everything left pending
	# must configure.
	n=$(printf '%s\n' "$REST" | wc -l)
	i=0
	printf '%s\n' "$REST" | while read -r batch; do
		i=$((i + 1))
		if [ "$i" -lt "$n" ]; then
			echo "kiln: dpkg --unpack, --configure --pending (batch $i of $n)"
			chroot "$R" dpkg --force-unsafe-io --unpack --abort-after=1 $(debs $batch) </dev/null
			chroot "$R" dpkg --force-unsafe-io --configure --pending </dev/null || echo "kiln: some packages wait for a later batch"
		else
			echo "kiln: dpkg --install (batch $i of $n)"
			chroot "$R" dpkg --force-unsafe-io --install --abort-after=1 $(debs $batch) </dev/null
			chroot "$R" dpkg --force-unsafe-io --configure --pending --abort-after=1 </dev/null
		fi
	done
fi
# Nothing may be left half-configured.
left=$(chroot "$R" dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | grep -v '^ii ' || true)
[ -z "$left" ] || { echo "dpkg left packages unconfigured: $left" >&2; exit 1; }
umount "$R/kiln-debs" "$R/proc"
for n in null zero full random urandom tty; do umount "$R/dev/$n"; rm -f "$R/dev/$n"; done
rmdir "$R/kiln-debs"
rm -f "$R/usr/sbin/policy-rc.d"
# mmdebstrap's cleanup/reproducible, apt lists and caches, /tmp and /run.
rm -f "$R/var/log/dpkg.log" "$R/var/log/apt/history.log" "$R/var/log/apt/term.log" \
	"$R/var/log/alternatives.log" "$R/var/cache/ldconfig/aux-cache" "$R/var/log/apt/eipp.log.xz" \
	"$R/var/lib/dbus/machine-id"
if [ -e "$R/etc/machine-id" ]; then : > "$R/etc/machine-id"; fi
if [ -d "$R/var/lib/apt/lists" ]; then find "$R/var/lib/apt/lists" -mindepth 1 -maxdepth 1 ! -name partial ! -name lock -exec rm -rf {} +; fi
rm -f "$R/var/cache/apt/pkgcache.bin" "$R/var/cache/apt/srcpkgcache.bin"
find "$R/tmp" "$R/run" -mindepth 1 -maxdepth 1 -exec rm -rf {} + 2>/dev/null || true
# kiln: no SSH host keys baked in (they are made on first boot).
rm -f "$R"/etc/ssh/ssh_host_*_key "$R"/etc/ssh/ssh_host_*_key.pub
# Every time clamped to SOURCE_DATE_EPOCH (mmdebstrap: tar --clamp-mtime).
find "$R" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
`
