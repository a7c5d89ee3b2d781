#!/bin/bash
# Build migd's packages on Debian: dist/migd_<version>_all.deb and dist/migd-<version>-1.noarch.rpm.
#
#   packaging/build.sh [--version V] [--outdir DIR] [--deb-only | --rpm-only] [--no-lint]
#
# --version V  build version V instead of src/migd/__init__.py's (env MIGD_VERSION; used to test upgrades): the
#              staged __version__ and a generated changelog entry say V
# --outdir DIR where the packages go (env MIGD_DIST; default dist/ in the repository)
# --no-lint    skip lintian/rpmlint (run by default when installed)
#
# Needs (Debian 12): debhelper dh-python python3-docutils rpm, and lintian rpmlint for the checks. The vendored
# Python libraries (packaging/vendor.txt) are downloaded once with pip into $MIGD_PKG_CACHE (/var/tmp/migd-pkg).
# Everything runs with the system's tools: PATH is reset so pyenv/venv pythons cannot shadow /usr/bin/python3.
set -euo pipefail

export PATH=/usr/sbin:/usr/bin:/sbin:/bin
unset PYTHONPATH PYTHONHOME VIRTUAL_ENV PYENV_VERSION DEB_BUILD_OPTIONS MAKEFLAGS
export LC_ALL=C.UTF-8

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PKG=$REPO/packaging
VERSION=${MIGD_VERSION:-}
OUTDIR=${MIGD_DIST:-$REPO/dist}
BUILD_DEB=1 BUILD_RPM=1 LINT=1

while [ $# -gt 0 ]; do
    case $1 in
        --version) VERSION=$2; shift 2 ;;
        --version=*) VERSION=${1#*=}; shift ;;
        --outdir) OUTDIR=$2; shift 2 ;;
        --outdir=*) OUTDIR=${1#*=}; shift ;;
        --deb-only) BUILD_RPM=0; shift ;;
        --rpm-only) BUILD_DEB=0; shift ;;
        --no-lint) LINT=0; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

need=()
[ $BUILD_DEB = 1 ] && need+=(dpkg-buildpackage dh dh_python3 rst2man)
[ $BUILD_RPM = 1 ] && need+=(rpmbuild rst2man)
for tool in "${need[@]}"; do
    command -v "$tool" >/dev/null || die "$tool not found: apt-get install debhelper dh-python python3-docutils rpm"
done

# --- version and changelog ------------------------------------------------------------------------------------
UPSTREAM=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$REPO/src/migd/__init__.py")
[ -n "$UPSTREAM" ] || die "no __version__ in src/migd/__init__.py"
CHANGELOG_VERSION=$(dpkg-parsechangelog -l "$PKG/debian/changelog" -S Version)
[ "$CHANGELOG_VERSION" = "$UPSTREAM" ] ||
    die "packaging/debian/changelog is at $CHANGELOG_VERSION but src/migd/__init__.py says $UPSTREAM: add a changelog entry (dch -v $UPSTREAM)"
VERSION=${VERSION:-$UPSTREAM}
[[ $VERSION =~ ^[0-9][A-Za-z0-9.+~]*$ ]] || die "version $VERSION: use digits, letters, . + ~ (no -)"
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
BUILD=${MIGD_BUILD_DIR:-$REPO/build/pkg}
CACHE=${MIGD_PKG_CACHE:-/var/tmp/migd-pkg}
case $BUILD in /|"$REPO"|"$HOME") die "refusing to use $BUILD as the build directory (it is emptied)" ;; esac
rm -rf "$BUILD"
mkdir -p "$BUILD"
T0=$(date +%s)

# --- stage the source tree both packages build from ----------------------------------------------------------
STAGE=$BUILD/migd-$VERSION
say "staging migd $VERSION in $STAGE"
mkdir -p "$STAGE"/{bin,lib,systemd,generator,etc,examples,man,completion}
cp "$PKG/dist.mk" "$STAGE/Makefile"
cp "$PKG/bin/migd" "$STAGE/bin/migd"
(cd "$REPO/src" && find migd -name '*.py' -not -path '*/__pycache__/*' -print0 |
    xargs -0 cp --parents -t "$STAGE/lib")
if [ "$VERSION" != "$UPSTREAM" ]; then
    sed -i "s/^__version__ = .*/__version__ = \"$VERSION\"/" "$STAGE/lib/migd/__init__.py"
fi
/usr/bin/python3 "$PKG/vendor.py" "$STAGE/lib" --cache "$CACHE/vendor"
cp "$PKG/systemd/migd.service" "$PKG/systemd/migd-watch.service" "$PKG/systemd/50-migd.preset" "$STAGE/systemd/"
cp "$PKG/generator/migd-generator" "$STAGE/generator/"
cp "$REPO/etc/migd.toml" "$STAGE/etc/"
cp "$REPO"/etc/examples/*.toml "$STAGE/examples/"
cp "$PKG/completion/migd.bash" "$PKG/completion/_migd" "$PKG/completion/migd.fish" "$STAGE/completion/"
cp "$PKG/LICENSE" "$PKG/debian/copyright" "$PKG/vendor.txt" "$STAGE/"
cp -r "$PKG/debian" "$STAGE/debian"
if [ "$VERSION" != "$UPSTREAM" ]; then  # a test build: its own changelog entry on top
    MAINT=$(dpkg-parsechangelog -l "$PKG/debian/changelog" -S Maintainer)
    { printf 'migd (%s) unstable; urgency=medium\n\n  * Build of %s for testing (packaging/build.sh --version).\n\n -- %s  %s\n\n' \
        "$VERSION" "$VERSION" "$MAINT" "$(date -R)"; cat "$PKG/debian/changelog"; } > "$STAGE/debian/changelog"
fi
export SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l "$STAGE/debian/changelog" -S Timestamp)
MAN_DATE=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
for rst in "$PKG"/man/*.rst; do
    sed -e "s/@VERSION@/$VERSION/g" -e "s/@DATE@/$MAN_DATE/g" "$rst" > "$STAGE/man/$(basename "$rst")"
done
find "$STAGE" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

# --- .deb -----------------------------------------------------------------------------------------------------
DEB=migd_${VERSION}_all.deb
if [ $BUILD_DEB = 1 ]; then
    say "dpkg-buildpackage -> $DEB"
    # Build-Depends are checked here, without the implicit build-essential (gcc & co.: nothing is compiled), and
    # dpkg-buildpackage is told not to check them again (-d).
    (cd "$STAGE" && dpkg-checkbuilddeps -I) ||
        die "missing build dependencies (apt-get install debhelper dh-python python3-docutils)"
    (cd "$STAGE" && dpkg-buildpackage --build=all -d -us -uc --no-sign) > "$BUILD/deb.log" 2>&1 ||
        { tail -40 "$BUILD/deb.log" >&2; die "dpkg-buildpackage failed (log: $BUILD/deb.log)"; }
    cp "$BUILD/$DEB" "$OUTDIR/$DEB"
    (cd "$STAGE" && debian/rules clean >/dev/null 2>&1 || true)
fi

# --- .rpm -----------------------------------------------------------------------------------------------------
RPM=migd-${VERSION}-1.noarch.rpm
if [ $BUILD_RPM = 1 ]; then
    say "rpmbuild -> $RPM"
    TOP=$BUILD/rpm
    mkdir -p "$TOP"/{SOURCES,SPECS,BUILD,RPMS,SRPMS}
    tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner --exclude=debian \
        -C "$BUILD" -czf "$TOP/SOURCES/migd-$VERSION.tar.gz" "migd-$VERSION"
    /usr/bin/python3 - "$PKG/rpm/migd.spec.in" "$STAGE/debian/changelog" "$PKG/vendor.txt" "$VERSION" \
        > "$TOP/SPECS/migd.spec" <<'PY'
import email.utils, re, sys
spec_in, changelog, vendor, version = sys.argv[1:]
# debian/changelog -> rpm %changelog: "* Wed Nov 25 2026 Name <mail> - 0.1.0-1" and "- item" lines.
entries, out = re.split(r"\n(?=\S)", open(changelog).read().strip()), []
for e in entries:
    head, *body = e.splitlines()
    ver = re.match(r"\S+ \(([^)]+)\)", head).group(1)
    trailer = [l for l in body if l.startswith(" -- ")][0]
    who, date = trailer[4:].split("  ", 1)
    day = email.utils.parsedate_to_datetime(date).strftime("%a %b %d %Y")
    out.append(f"* {day} {who} - {ver}-1")
    items = []
    for l in body:
        if l.startswith("  * "):
            items.append(l[4:].strip())
        elif l.startswith("    ") and items:
            items[-1] += " " + l.strip()
    out += [f"- {i}".replace("%", "%%") for i in items] + [""]
spec = open(spec_in).read().replace("@VERSION@", version).replace("@CHANGELOG@", "\n".join(out).rstrip())
for line in open(vendor):
    m = re.match(r"([A-Za-z0-9_.-]+)==(\S+)", line)
    if m:
        spec = spec.replace(f"@V_{m.group(1)}@", m.group(2))
left = re.findall(r"@[A-Za-z_-]+@", spec)
if left:
    sys.exit(f"migd.spec.in: unfilled {left}")
sys.stdout.write(spec)
PY
    macros=()
    [ -n "$(rpm --eval '%{?_unitdir}')" ] || macros=(--load "$PKG/rpm/macros.systemd")
    # --nodeps: BuildRequires name RHEL packages; on Debian the rpm database is empty (the tools were checked above).
    # brp-compress (gzips the man pages) uses bash's read -d but says #!/bin/sh, which is dash on Debian.
    rpmbuild -bb --nodeps "${macros[@]}" \
        --define "_topdir $TOP" \
        --define "use_source_date_epoch_as_buildtime 1" \
        --define "clamp_mtime_to_source_date_epoch 1" \
        --define "_buildhost reproducible" \
        --define "packager $(dpkg-parsechangelog -l "$PKG/debian/changelog" -S Maintainer)" \
        --define "__brp_compress /bin/bash %{_rpmconfigdir}/brp-compress %{?_prefix}" \
        "$TOP/SPECS/migd.spec" > "$BUILD/rpm.log" 2>&1 ||
        { tail -40 "$BUILD/rpm.log" >&2; die "rpmbuild failed (log: $BUILD/rpm.log)"; }
    cp "$TOP/RPMS/noarch/$RPM" "$OUTDIR/$RPM"
fi
say "built in $(( $(date +%s) - T0 ))s: $( [ $BUILD_DEB = 1 ] && echo "$OUTDIR/$DEB " )$( [ $BUILD_RPM = 1 ] && echo "$OUTDIR/$RPM" )"

# --- checks -----------------------------------------------------------------------------------------------------
if [ $LINT = 1 ]; then
    if [ $BUILD_DEB = 1 ] && command -v lintian >/dev/null; then
        say "lintian $DEB"
        lintian --fail-on error,warning --display-info "$OUTDIR/$DEB"
    fi
    if [ $BUILD_RPM = 1 ] && command -v rpmlint >/dev/null; then
        say "rpmlint $RPM"
        rpmlint -r "$PKG/rpm/migd.rpmlintrc" "$OUTDIR/$RPM"
    fi
fi
