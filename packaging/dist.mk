# Makefile of the staged migd tree that packaging/build.sh makes (it is copied there as "Makefile").
# debian/rules (through dh_auto_build/dh_auto_install) and migd.spec (%build/%install) both use it, so the two
# packages lay out the same files. It builds the man pages and installs; it downloads nothing.
#
#   make            build man/migd.8 and man/migd.toml.5 from their reStructuredText sources (rst2man)
#   make install DESTDIR=... [UNITDIR=...] [PRESETDIR=...]

PREFIX        ?= /usr
BINDIR        ?= $(PREFIX)/bin
LIBDIR        ?= $(PREFIX)/lib/migd
SYSCONFDIR    ?= /etc
UNITDIR       ?= /usr/lib/systemd/system
# systemd.generator(7): migd-generator orders [daemon] gpu_clients after migd.service
GENERATORDIR  ?= /usr/lib/systemd/system-generators
# Only the rpm ships a preset (Fedora/RHEL enable units through presets); empty: none.
PRESETDIR     ?=
MANDIR        ?= $(PREFIX)/share/man
DOCDIR        ?= $(PREFIX)/share/doc/migd
COMPLETIONDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR    ?= $(PREFIX)/share/zsh/vendor-completions
FISHCOMPDIR   ?= $(PREFIX)/share/fish/vendor_completions.d
RST2MAN       ?= rst2man
INSTALL       ?= install

MANPAGES = man/migd.8 man/migd.toml.5

all: man

man: $(MANPAGES)

# --strict: any docutils warning (a broken reference, a bad table) fails the build.
man/%: man/%.rst
	$(RST2MAN) --strict --no-generator --no-datestamp --no-source-link $< $@

install: $(MANPAGES)
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR) \
	    $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 $(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(COMPLETIONDIR) \
	    $(DESTDIR)$(ZSHCOMPDIR) $(DESTDIR)$(FISHCOMPDIR)
	$(INSTALL) -m 0755 bin/migd $(DESTDIR)$(BINDIR)/migd
	cd lib && find . -type f -name '*.py' | LC_ALL=C sort | while read -r f; do \
	    $(INSTALL) -D -m 0644 "$$f" "$(DESTDIR)$(LIBDIR)/$$f" || exit 1; done
	$(INSTALL) -m 0644 systemd/migd.service systemd/migd-watch.service $(DESTDIR)$(UNITDIR)/
	$(INSTALL) -D -m 0755 generator/migd-generator $(DESTDIR)$(GENERATORDIR)/migd-generator
	$(INSTALL) -m 0644 etc/migd.toml $(DESTDIR)$(SYSCONFDIR)/migd.toml
	$(INSTALL) -m 0644 man/migd.8 $(DESTDIR)$(MANDIR)/man8/migd.8
	$(INSTALL) -m 0644 man/migd.toml.5 $(DESTDIR)$(MANDIR)/man5/migd.toml.5
	$(INSTALL) -m 0644 examples/*.toml $(DESTDIR)$(DOCDIR)/examples/
	$(INSTALL) -m 0644 completion/migd.bash $(DESTDIR)$(COMPLETIONDIR)/migd
	$(INSTALL) -m 0644 completion/_migd $(DESTDIR)$(ZSHCOMPDIR)/_migd
	$(INSTALL) -m 0644 completion/migd.fish $(DESTDIR)$(FISHCOMPDIR)/migd.fish
	if [ -n "$(PRESETDIR)" ]; then \
	    $(INSTALL) -D -m 0644 systemd/50-migd.preset $(DESTDIR)$(PRESETDIR)/50-migd.preset; fi

clean:
	rm -f $(MANPAGES)

.PHONY: all man install clean
