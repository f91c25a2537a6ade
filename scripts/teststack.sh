#!/usr/bin/env bash
# teststack.sh - a real mail stack on loopback for the test suite.
#
# Usage: scripts/teststack.sh install|up|down|status|restart-postfix|stop SERVICE|start SERVICE
#        SERVICE is one of: postfix dovecot lmtp unbound prometheus alertmanager postgresql verifiers
#
#   install          apt-get install the needed Debian packages (skipped when all
#                    binaries exist; postfix is preseeded to "No configuration",
#                    and services are kept from auto-starting during the install
#                    via a temporary /usr/sbin/policy-rc.d if none exists).
#   up               generate everything under $MCE_STACK_DIR, start all services,
#                    wait until each one answers, write $MCE_STACK_DIR/stack.json.
#                    No-op (exit 0) if everything is already up.  If only some
#                    services are down (e.g. after "stop X"), the missing ones are
#                    started with the existing configuration.  If nothing of ours
#                    runs, the stack dir is wiped and regenerated (new passwords,
#                    new certificates, empty queue/mailboxes/TSDB).  Prints one
#                    line on stdout: "up: created", "up: repaired" or
#                    "up: already-up" (progress goes to stderr).  A running
#                    stack made by a version of this script without OAuth2
#                    gets it added (add_oauth2: Dovecot reloaded, Postfix's
#                    smtpd processes replaced, nothing else restarted; "up:
#                    repaired").  A running stack made by a version without
#                    the verifiers (stack.json has no "verifiers") is stopped
#                    and made afresh, as by "down" then "up" ("up: created").
#   down             stop everything this script started (pid files of our own
#                    instances only; never the system-wide services) and remove
#                    stack.json.  Logs and data stay until the next "up".
#   status           one line per service; exit 0 iff all are up and stack.json
#                    is there and current ("stack.json outdated": no "oauth2"
#                    or no "verifiers").
#   restart-postfix  postfix stop + start of our instance.
#   stop/start SVC   outage injection for tests.
#
# Needs root (creates the mail user, starts Postfix/Dovecot, runs PostgreSQL as
# the system user "postgres").  Everything binds to 127.0.0.1 only (plus
# Unbound on port 53 of one more loopback address, see Ports); nothing is
# sent off the box (the Postfix relayhost is a dead port on loopback, Unbound
# refuses everything outside its local zones).
# up/down/start/stop/restart-postfix are serialised with flock on
# "$MCE_STACK_DIR.lock" (e.g. /tmp/mce-teststack.lock), so concurrent callers
# such as pytest-xdist workers do not race.  Outside the stack dir the script
# only touches: the system user "mcevmail" (created if missing), the lock file,
# and the default Postfix instance's main.cf, where the stack's config dir is
# appended to alternate_config_directories (the default instance is never
# started; a minimal /etc/postfix/main.cf is created if there is none).
# ("install" of Debian's postgresql package also creates its default cluster,
# e.g. /var/lib/postgresql/15/main; the stack never starts or uses it.)
#
# Environment:
#   MCE_STACK_DIR    stack directory (default /tmp/mce-teststack); must be an
#                    absolute path made of [A-Za-z0-9._/-].
#   MCE_WEBHOOK_URL  Alertmanager webhook receiver URL, read at "up"
#                    (default http://127.0.0.1:10587/alertmanager, the port
#                    shifted by MCE_STACK_PORT_OFFSET).
#   MCE_STACK_WAIT   seconds to wait for each service to answer (default 30).
#   MCE_STACK_PORT_OFFSET
#                    added to every port below (default 0), in the generated
#                    configs and in stack.json, so that a second stack (e.g.
#                    scripts/demo.sh's, offset 1000: 3525, 30090, ...) runs
#                    beside the test stack.  Give every command of one stack
#                    the same offset.  0 to 36442.
#
# Ports (all on 127.0.0.1; the defaults, before MCE_STACK_PORT_OFFSET):
#   2525 Postfix smtpd, port-25 role, STARTTLS offered (valid cert), no AUTH
#   2526/2527/2528 Postfix smtpd with STARTTLS using the expired / self-signed /
#        wrong-host certificate
#   2587 Postfix submission: STARTTLS required, SASL AUTH (Dovecot auth on 2499)
#   2465 Postfix smtps (implicit TLS), SASL AUTH
#   2143 Dovecot IMAP (STARTTLS), 2993 IMAPS, 2424 LMTP, 2499 auth (for Postfix)
#   2053 Unbound (UDP+TCP)
#   29090 Prometheus, 29093 Alertmanager
#   2432 PostgreSQL (TCP; its Unix socket is in $MCE_STACK_DIR/postgresql/run)
#   2999 dead relay: nothing listens; mail for non-local domains is relayed
#        there and stays deferred ("Connection refused").
#   127.0.0.2:2525 dead MX (mx2.example.test), nothing listens.
#   2588 Postfix submission_signed: like 2587, plus DKIM signing (OpenDKIM);
#        every message accepted here is relayed to 2529, whatever its recipients
#   2529 Postfix inbound_verified: port-25 role (no AUTH), SPF/DKIM/DMARC
#        verification, greets as mx-in.example.test (see Verifiers)
#   2891 OpenDKIM signing milter, 2892 OpenDKIM verifying milter, 2893 OpenDMARC
#   127.53.A.B:53 Unbound again (UDP+TCP), for OpenDMARC's libc resolver: A.B
#        is derived from the offset (A = offset / 250, B = offset % 250 + 1;
#        127.53.0.1 at offset 0, 127.53.4.1 at 1000), so every stack has its
#        own; port 53 is not shifted.
#
# Mail routing: example.test and archive.example.test are virtual mailbox
# domains (known users only, others get 550 at RCPT) delivered with
# lmtp:inet:127.0.0.1:2424 to Dovecot.  Everything else goes to
# relayhost [127.0.0.1]:2999.  No DNS is used by Postfix.  Access rules:
# tempfail@example.test -> "450 4.2.0 try later", reject@example.test ->
# "554 5.7.1 no".  Retry timers are long (queue_run_delay/minimal_backoff_time
# 1h, lifetimes 5d) so queues stay stable; use "postqueue -c DIR -f" to retry.
#
# Postfix logs to $MCE_STACK_DIR/postfix/maillog via postlogd (no syslog).
# smtpd_peername_lookup = no, so clients show up as "unknown[127.0.0.1]" and
# no resolver lookups happen.
#
# Dovecot: plaintext auth is only allowed on secured connections
# (disable_plaintext_auth = yes), but note that Dovecot treats connections
# whose client IP equals the server IP as secured, so on loopback LOGIN works
# on 2143 even without STARTTLS.  Failed logins are answered at once
# (auth_failure_delay = 0, anvil auth penalty disabled) so wrong-password tests
# do not slow down later logins from 127.0.0.1.  Mailboxes are Maildir at
# $MCE_STACK_DIR/mail/<domain>/<user>, owned by the system user "mcevmail".
# A global sieve_before script files mail with "X-Test-Junk: yes" into Junk.
# Log timestamps have microseconds ("%Y-%m-%d %H:%M:%S.%{usecs} ").
#
# "stop lmtp" / "start lmtp": Dovecot's LMTP service is really switched off:
# $MCE_STACK_DIR/dovecot/protocols.conf is rewritten to "protocols = imap"
# (resp. "imap lmtp") and Dovecot is reloaded; the script waits until port
# 2424 is closed (resp. answers).  While it is off Postfix's LMTP deliveries
# are deferred with "Connection refused" and pile up in the deferred queue;
# "start lmtp" (and "start dovecot") re-enable it and run "postqueue -f" so
# the backlog is delivered immediately and Postfix forgets that the LMTP
# destination was dead (otherwise new mail would be deferred with "delivery
# temporarily suspended" for minimal_backoff_time = 1h).  Postfix's LMTP connection cache is disabled so no
# cached connection outlives the stop.  IMAP and auth stay up meanwhile.
# A Dovecot reload also replaces Dovecot's auth process, which would break
# the auth connections that Postfix's smtpd processes keep open (next AUTH:
# "454 4.7.0 ... Connection lost to authentication server"), so after every
# Dovecot reload or start the script also runs "postfix reload" and waits for
# the old smtpd processes to exit.
# "stop dovecot" stops all of Dovecot (IMAP, LMTP, auth); "start dovecot"
# keeps the current LMTP on/off state; "up" turns everything on.
#
# OAuth2: auth_mechanisms are plain login xoauth2 oauthbearer.  XOAUTH2 and
# OAUTHBEARER go only to an oauth2 passdb (passdb "mechanisms"), PLAIN/LOGIN
# and mechanism-less lookups (LMTP's user checks) only to passwd-file, so a
# password is never a bearer token and a token never a password.  The oauth2
# passdb validates JWT access tokens locally ($MCE_STACK_DIR/dovecot/oauth2.conf.ext,
# introspection_mode = local): RS256 signature with the stack's key pair
# (gen_oauth2, made at "up": $MCE_STACK_DIR/oauth2/signing.key signs, the
# public key is $MCE_STACK_DIR/oauth2/keys/default/RS256/<kid>, kid = its RFC
# 7638 thumbprint), header typ "JWT", exp required and not past, nbf/iat not
# in the future, sub required, iss = https://idp.example.test, and the claim
# "email" = the login name (lower-cased); "aud" is not checked (2.3.19 cannot).
# Postfix submission/smtps offer the same mechanisms through Dovecot's auth.
# The user oauth@example.test (also with a password) is for OAuth2 tests; a
# token works for any user.  tests/oauth_server.py issues such tokens.
#
# Unbound: local data (zones example.test, good.test, badspf.test,
# baddmarc.test, notlsrpt.test, nomx.test, dnsbl.test, sts.test under a static
# "test." zone, see gen_unbound; the verifiers' signed.test, wrongkey.test and
# spffail.test, see Verifiers) plus two DNSSEC-signed zones (gen_dnssec);
# other .test names are NXDOMAIN and everything outside .test is REFUSED
# ("local-zone: . refuse"), so it never recurses.  Local data is unsigned:
# answers never carry AD.
#   sts.test (MTA-STS): MX 10 mx1.example.test, _mta-sts TXT
#     "v=STSv1; id=20261207T000000;", mta-sts.sts.test A 127.0.0.1.  No policy
#     server runs: a test serves https://mta-sts.sts.test/.well-known/mta-sts.txt
#     itself, on 127.0.0.1 at a port of its own, with the "mtasts" certificate.
#   dnssec.test and bogus.test are signed at "up" (ldns-keygen -a
#   ECDSAP256SHA256, one KSK and one ZSK per zone, ldns-signzone with NSEC,
#   signatures valid from now for 4 weeks), served as auth-zones to Unbound's
#   own iterator and validated (module-config "validator iterator", a
#   trust-anchor-file with each zone's KSK).  P is the self-signed port (2527).
#     dnssec.test: MX 10 mx.dnssec.test (A 127.0.0.1), _P._tcp.mx TLSA 3 1 1
#       SHA-256 of the selfsigned cert's SPKI (matches what P presents);
#       mismatch.dnssec.test MX 10 mxbad.dnssec.test (A 127.0.0.1), _P._tcp.mxbad
#       TLSA 3 1 1 of the valid cert's key (does not match P);
#       nodane.dnssec.test MX 10 mxplain.dnssec.test (A 127.0.0.1), no TLSA
#       (validated NXDOMAIN).  Every answer carries AD.
#     bogus.test: MX 10 mx.bogus.test (A 127.0.0.1), _P._tcp.mx.bogus.test TLSA
#       3 1 1 of the selfsigned key, whose RRSIG is corrupted: that TLSA query
#       is SERVFAIL (NOERROR with the record when CD is set); MX and A
#       validate (AD).
#   Files: $MCE_STACK_DIR/unbound/dnssec/{ZONE.zone,ZONE.signed,ZONE.anchor,keys/}.
#
# Verifiers (receiver-side mail authentication, gen_verifiers; files in
# $MCE_STACK_DIR/verifiers): Debian's OpenDKIM, OpenDMARC and policyd-spf, all
# with the authserv-id mx-in.example.test.  A message submitted on 2588 (AUTH
# as any stack user; any sender address, no sender/login check) is signed by
# an OpenDKIM instance in Mode s (KeyTable/SigningTable (refile) by the From:
# domain, selector "mce", relaxed/relaxed rsa-sha256, InternalHosts
# 127.0.0.1), then relayed by Postfix's smtp client (content_filter) to 2529.
# There policyd-spf (master.cf "spawn" service, check_policy_service in
# smtpd_recipient_restrictions; never rejects, Header_Type AR, skip_addresses
# without loopback so 127.0.0.1 is checked; run by verifiers/policyd-spf.py,
# which points its resolver at 127.0.0.1:2053 and appends its syslog lines to
# verifiers/policyd-spf.log) prepends the SPF result, and the milters OpenDKIM
# (Mode v; InternalHosts 192.0.2.255 only, so loopback is verified; keys
# looked up with libunbound forwarding to 127.0.0.1:2053, with "test." not
# answered by libunbound itself) and then OpenDMARC (RejectFailures false, so
# failing mail is delivered with its verdict; IgnoreHosts 192.0.2.255 only;
# SPF and DKIM results taken from the Authentication-Results of
# mx-in.example.test; no SPFSelfValidate: its libspf2 passes every loopback
# client) add theirs; then it is delivered like any local mail.
# Authentication-Results fields that arrive with the message are left alone
# (no RFC 8601 section 5 stripping: Postfix's header_checks would also remove
# the field policyd-spf prepends).
#   Test domains (keys: RSA 2048, made at each "up"; DNS data in
#   verifiers/unbound-local.conf, included by unbound.conf):
#     signed.test    SPF "v=spf1 ip4:127.0.0.0/8 -all", mce._domainkey = the
#                    signing key, _dmarc "v=DMARC1; p=reject":
#                    spf=pass, dkim=pass, dmarc=pass
#     wrongkey.test  SPF "v=spf1 ?all", mce._domainkey = another key than the
#                    one it is signed with, _dmarc "v=DMARC1; p=reject":
#                    spf=neutral, dkim=fail, dmarc=fail
#     spffail.test   SPF "v=spf1 ip4:192.0.2.0/24 -all", the signing key
#                    published, _dmarc "v=DMARC1; p=quarantine":
#                    spf=fail, dkim=pass, dmarc=pass (DKIM-aligned)
#   The milters run in the foreground under our pid files (verifiers/*.pid;
#   no syslog on the box: their stderr, with configuration and startup errors,
#   goes to verifiers/*.log; the verdicts are in the delivered messages).
#   OpenDMARC can only use the libc resolver, so it runs in a private mount
#   namespace (unshare) in which verifiers/resolv.conf ("nameserver
#   127.53.A.B") is bind-mounted over /etc/resolv.conf; the real file is never
#   touched.  "stop verifiers" stops the three milters: mail on 2588 and 2529
#   is then refused with 451 (milter_default_action tempfail).
#
# Prometheus: scrape/evaluation interval 5s, rule_files
# $MCE_STACK_DIR/prometheus/rules/*.yml, scrape job "mail" from file_sd
# $MCE_STACK_DIR/prometheus/targets/*.json, alerts to 127.0.0.1:29093,
# retention 2h, --web.enable-lifecycle (POST /-/reload after changes).
# Alertmanager: one receiver "default" (webhook $MCE_WEBHOOK_URL,
# send_resolved), group_by [alertname], group_wait/group_interval 1s,
# repeat_interval 1m, clustering disabled.  Tests may rewrite its config and
# POST /-/reload.
#
# PostgreSQL (the HA incident store): a cluster of its own in
# $MCE_STACK_DIR/postgresql/data, made at "up" by initdb of the newest
# /usr/lib/postgresql/<major>/bin that has the server (run as the system user
# "postgres"; the cluster is then always run with its own major's binaries),
# --auth-host=scram-sha-256 --auth-local=peer, UTF8, locale C.UTF-8 (C if
# missing).  Role "mce" (LOGIN CREATEDB, random password, created in
# single-user mode right after initdb) owns database "mce"; the superuser
# "postgres" has no password (peer, Unix socket only).  The stack's settings
# are in $MCE_STACK_DIR/postgresql/postgresql.conf, included at the end of the
# data dir's postgresql.conf: listen_addresses 127.0.0.1, the Unix socket in
# $MCE_STACK_DIR/postgresql/run, fsync, synchronous_commit and
# full_page_writes on (real durability: the exporter's durability tests rely
# on it), shared_buffers 32MB, max_connections 50, timezone UTC.  Started with
# "pg_ctl start -w" (log: $MCE_STACK_DIR/postgresql/postgresql.log), stopped
# with "pg_ctl stop -m fast"; "stop postgresql" returns once the port is closed,
# "start postgresql" once pg_isready says it accepts connections; data survive.
# After a SIGKILL of the postmaster, "start postgresql" first waits until the
# killed server's processes are gone (a zombie postmaster or a child still
# attached to the shared memory makes the new one refuse to start), then
# PostgreSQL runs crash recovery.
# "up" on a running stack made before PostgreSQL was part of it adds the
# cluster, starts it and rewrites stack.json ("up: repaired").
#
# stack.json (top-level keys):
#   version, stack_dir, host ("127.0.0.1"), hostname ("mx1.example.test"),
#   local_domains, users {address: password}, ports {smtp, smtp_expired,
#   smtp_selfsigned, smtp_wronghost, submission, smtps, imap, imaps, lmtp,
#   dovecot_auth, dns, prometheus, alertmanager, dead_relay, postgresql,
#   submission_signed, inbound_verified},
#   dead_relay {host, port}, dead_mx {hostname, host, port},
#   certs {ca|valid|expired|selfsigned|wronghost|mtasts|idp: {cert, key, chain,
#          not_before, not_after, subject_cn, sans}}  (timestamps: Unix seconds;
#          mtasts: CA-issued, CN and only SAN mta-sts.sts.test; idp: CA-issued,
#          CN localhost, SANs localhost and 127.0.0.1, for the tests' token service),
#   postfix {config_dir, queue_dir, data_dir, log},
#   dovecot {config, base_dir, log, users_file, mail_dir, home_dir, sieve_before},
#   mail_dir, unbound {config, log, pid_file, host, port, zones (the static ones)},
#   dnssec {zones ["dnssec.test", "bogus.test"], tlsa_port (P = smtp_selfsigned),
#           trust_anchors [.../unbound/dnssec/ZONE.anchor, one per zone],
#           signed_dir (.../unbound/dnssec)},
#   mta_sts {domain "sts.test", policy_host "mta-sts.sts.test", cert "mtasts"},
#   prometheus {url, config, rules_dir, targets_dir, data_dir, log},
#   alertmanager {url, config, data_dir, log, webhook_url},
#   postgresql {host, port, user ("mce"), password, database ("mce"),
#               dsn ("postgresql://mce:PASSWORD@127.0.0.1:2432/mce"), data_dir,
#               socket_dir, config, log, bin_dir (the cluster's major)},
#   logs {postfix, dovecot, unbound, prometheus, alertmanager, postgresql},
#   oauth2 {private_key (PEM, signs tokens), public_key, kid, alg ("RS256"),
#           issuer ("https://idp.example.test", required by Dovecot),
#           audience (null: not checked), username_attribute ("email"),
#           user ("oauth@example.test"), mechanisms (["XOAUTH2", "OAUTHBEARER"]),
#           key_dict (Dovecot's local_validation_key_dict), key_file (the
#           public key where Dovecot finds it), dovecot_config (oauth2.conf.ext),
#           cert ("idp": the key of certs for the token service)},
#   verifiers {authserv_id ("mx-in.example.test"), submission_signed {host, port},
#              inbound {host, port, hostname ("mx-in.example.test")},
#              selector ("mce"), domains {signed, wrongkey, spffail: the domain},
#              expected {DOMAIN: {spf, dkim, dmarc}: the verdicts of a message
#              From: and MAIL FROM: someone@DOMAIN sent via submission_signed},
#              keys {DOMAIN: the key it is signed with}, published_keys {DOMAIN:
#              the key in its DNS}, milters {opendkim_sign, opendkim_verify,
#              opendmarc: {host, port}}, resolver {host (127.53.A.B), port (53)},
#              dir, config {opendkim_sign, opendkim_verify, opendmarc,
#              policyd_spf, unbound_data}, logs {opendkim_sign, opendkim_verify,
#              opendmarc, policyd_spf}},
#   script (absolute path of this script).

set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin${PATH:+:$PATH}"
export LC_ALL=C
umask 022

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
SCRIPT_PATH="$SCRIPT_DIR/$(basename -- "${BASH_SOURCE[0]}")"
CERTS_HELPER="$SCRIPT_DIR/teststack_certs.py"

STACK_DIR=${MCE_STACK_DIR:-/tmp/mce-teststack}
WAIT_TIMEOUT=${MCE_STACK_WAIT:-30}

# Every port is shifted by this offset; the highest port (29093) must stay <= 65535.
PORT_OFFSET=${MCE_STACK_PORT_OFFSET:-0}
if [[ ! $PORT_OFFSET =~ ^[0-9]{1,5}$ ]] || ((10#$PORT_OFFSET > 36442)); then
    printf 'teststack: ERROR: MCE_STACK_PORT_OFFSET: expected a whole number from 0 to 36442, got "%s"\n' \
        "$PORT_OFFSET" >&2
    exit 2
fi
PORT_OFFSET=$((10#$PORT_OFFSET))
WEBHOOK_URL=${MCE_WEBHOOK_URL:-http://127.0.0.1:$((10587 + PORT_OFFSET))/alertmanager}

HOST=127.0.0.1
MX_HOSTNAME=mx1.example.test
PORT_SMTP=$((2525 + PORT_OFFSET))
PORT_SMTP_EXPIRED=$((2526 + PORT_OFFSET))
PORT_SMTP_SELFSIGNED=$((2527 + PORT_OFFSET))
PORT_SMTP_WRONGHOST=$((2528 + PORT_OFFSET))
PORT_SUBMISSION=$((2587 + PORT_OFFSET))
PORT_SMTPS=$((2465 + PORT_OFFSET))
PORT_IMAP=$((2143 + PORT_OFFSET))
PORT_IMAPS=$((2993 + PORT_OFFSET))
PORT_LMTP=$((2424 + PORT_OFFSET))
PORT_AUTH=$((2499 + PORT_OFFSET))
PORT_DNS=$((2053 + PORT_OFFSET))
PORT_PROMETHEUS=$((29090 + PORT_OFFSET))
PORT_ALERTMANAGER=$((29093 + PORT_OFFSET))
PORT_DEAD_RELAY=$((2999 + PORT_OFFSET))
PORT_POSTGRESQL=$((2432 + PORT_OFFSET))
# Mail authentication verifiers (gen_verifiers)
PORT_SUBMISSION_SIGNED=$((2588 + PORT_OFFSET))
PORT_INBOUND_VERIFIED=$((2529 + PORT_OFFSET))
PORT_MILTER_SIGN=$((2891 + PORT_OFFSET))
PORT_MILTER_VERIFY=$((2892 + PORT_OFFSET))
PORT_MILTER_DMARC=$((2893 + PORT_OFFSET))
# Unbound also answers on port 53 of this loopback address (unique per offset:
# 127.53.0.1 at offset 0), for the verifiers that use the libc resolver.
VF_DNS_ADDR=127.53.$((PORT_OFFSET / 250)).$((PORT_OFFSET % 250 + 1))

VMAIL_USER=mcevmail
USERS=(probe@example.test ops@example.test archive@archive.example.test replica@example.test oauth@example.test)
# OAuth2 (gen_oauth2): Dovecot validates JWT bearer tokens (XOAUTH2, OAUTHBEARER)
# locally with the stack's RSA public key.
OAUTH_USER=oauth@example.test
OAUTH_ALG=RS256
OAUTH_ISSUER=https://idp.example.test
OAUTH_USERNAME_ATTRIBUTE=email
SERVICES=(postfix dovecot lmtp unbound prometheus alertmanager postgresql verifiers)
PACKAGES=(postfix dovecot-imapd dovecot-lmtpd dovecot-sieve unbound prometheus prometheus-alertmanager openssl
    opendkim opendkim-tools opendmarc postfix-policyd-spf-python  # the verifiers (gen_verifiers)
    postgresql  # the HA incident store; binaries in /usr/lib/postgresql/<major>/bin (PG_BINARIES)
    prometheus-blackbox-exporter prometheus-postfix-exporter iproute2  # these three: benchmarks only
    systemd-journal-remote  # writes the real journal files of tests/test_logs_journal.py
    ldnsutils)  # ldns-keygen/ldns-signzone: the DNSSEC-signed zones (gen_dnssec)
BINARIES=(postfix postconf postqueue postsuper dovecot doveadm doveconf sievec unbound unbound-checkconf prometheus prometheus-alertmanager openssl python3
    ldns-keygen ldns-signzone opendkim opendmarc policyd-spf unshare)
# Not on PATH: looked for in /usr/lib/postgresql/<major>/bin (pg_newest_bin_dir);
# tests/stack.py's POSTGRESQL_BINARIES mirrors this list.
PG_BINARIES=(initdb pg_ctl postgres pg_isready psql)

MARKER_NAME=.mce-teststack
# Serialises up/down/start/stop of concurrent callers (e.g. pytest-xdist
# workers).  Lives next to the stack dir because "up" wipes the stack dir.
LOCK_FILE="${STACK_DIR%/}.lock"
STACK_JSON="$STACK_DIR/stack.json"
CERT_DIR="$STACK_DIR/certs"
PF_DIR="$STACK_DIR/postfix"
PF_ETC="$PF_DIR/etc"
PF_SPOOL="$PF_DIR/spool"
PF_DATA="$PF_DIR/data"
PF_LOG="$PF_DIR/maillog"
PF_START_LOG="$PF_DIR/start.log"
DC_DIR="$STACK_DIR/dovecot"
DC_CONF="$DC_DIR/dovecot.conf"
DC_PROTOCOLS="$DC_DIR/protocols.conf"
DC_RUN="$DC_DIR/run"
DC_STATE="$DC_DIR/state"
DC_LOG="$DC_DIR/dovecot.log"
DC_START_LOG="$DC_DIR/start.log"
DC_USERS="$DC_DIR/users"
DC_SIEVE="$DC_DIR/sieve/before.sieve"
DC_OAUTH2_CONF="$DC_DIR/oauth2.conf.ext"
OAUTH_DIR="$STACK_DIR/oauth2"
OAUTH_KEY="$OAUTH_DIR/signing.key"
OAUTH_PUB="$OAUTH_DIR/signing.pub"
OAUTH_KID_FILE="$OAUTH_DIR/kid"
# Dovecot's local_validation_key_dict (fs:posix): <prefix>/<azp or "default">/<alg>/<kid>
OAUTH_KEYS="$OAUTH_DIR/keys"
MAIL_DIR="$STACK_DIR/mail"
HOME_DIR="$STACK_DIR/home"
UB_DIR="$STACK_DIR/unbound"
UB_CONF="$UB_DIR/unbound.conf"
UB_PID="$UB_DIR/unbound.pid"
UB_LOG="$UB_DIR/unbound.log"
UB_START_LOG="$UB_DIR/start.log"
# DNSSEC-signed zones (gen_dnssec): zone files, keys and trust anchors
DNSSEC_DIR="$UB_DIR/dnssec"
DNSSEC_ZONES=(dnssec.test bogus.test)
PROM_DIR="$STACK_DIR/prometheus"
PROM_CONF="$PROM_DIR/prometheus.yml"
PROM_DATA="$PROM_DIR/data"
PROM_RULES="$PROM_DIR/rules"
PROM_TARGETS="$PROM_DIR/targets"
PROM_LOG="$PROM_DIR/prometheus.log"
PROM_PID="$PROM_DIR/prometheus.pid"
AM_DIR="$STACK_DIR/alertmanager"
AM_CONF="$AM_DIR/alertmanager.yml"
AM_DATA="$AM_DIR/data"
AM_LOG="$AM_DIR/alertmanager.log"
AM_PID="$AM_DIR/alertmanager.pid"
PG_DIR="$STACK_DIR/postgresql"
PG_CONF="$PG_DIR/postgresql.conf"
PG_DATA="$PG_DIR/data"
PG_RUN="$PG_DIR/run"
PG_LOG="$PG_DIR/postgresql.log"
PG_START_LOG="$PG_DIR/start.log"
PG_INIT_LOG="$PG_DIR/init.log"
PG_PASSWORD="$PG_DIR/password"
PG_OS_USER=postgres
# In the process titles ("postgres: mce-teststack-2432: checkpointer"); the
# port makes it unique among the stacks on this machine.
PG_CLUSTER_NAME="mce-teststack-$PORT_POSTGRESQL"
PG_ROLE=mce
PG_DATABASE=mce
# Mail authentication verifiers (gen_verifiers): OpenDKIM (a signing and a
# verifying instance), OpenDMARC and policyd-spf, all with this authserv-id.
VF_DIR="$STACK_DIR/verifiers"
VF_KEYS="$VF_DIR/keys"
VF_AUTHSERV_ID=mx-in.example.test
VF_SELECTOR=mce
VF_DOMAIN_SIGNED=signed.test
VF_DOMAIN_WRONGKEY=wrongkey.test
VF_DOMAIN_SPFFAIL=spffail.test
VF_UNBOUND_DATA="$VF_DIR/unbound-local.conf"
VF_LIBUNBOUND_CONF="$VF_DIR/libunbound.conf"
VF_RESOLV_CONF="$VF_DIR/resolv.conf"
VF_NO_HOSTS="$VF_DIR/no-hosts"
VF_SIGN_CONF="$VF_DIR/opendkim-sign.conf"
VF_SIGN_PID="$VF_DIR/opendkim-sign.pid"
VF_SIGN_LOG="$VF_DIR/opendkim-sign.log"
VF_VERIFY_CONF="$VF_DIR/opendkim-verify.conf"
VF_VERIFY_PID="$VF_DIR/opendkim-verify.pid"
VF_VERIFY_LOG="$VF_DIR/opendkim-verify.log"
VF_DMARC_CONF="$VF_DIR/opendmarc.conf"
VF_DMARC_PID="$VF_DIR/opendmarc.pid"
VF_DMARC_LOG="$VF_DIR/opendmarc.log"
VF_SPF_CONF="$VF_DIR/policyd-spf.conf"
VF_SPF_WRAPPER="$VF_DIR/policyd-spf.py"
VF_SPF_LOG="$VF_DIR/policyd-spf.log"

# ----------------------------------------------------------------------------
# helpers

log() { printf 'teststack: %s\n' "$*" >&2; }
die() { printf 'teststack: ERROR: %s\n' "$*" >&2; exit 1; }

usage() {
    sed -n '4,5p' "$SCRIPT_PATH" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# Take the stack lock on fd 9 (released when the script exits).  Every
# command below that may leave a daemon behind closes fd 9 ("9>&-") so no
# daemon inherits the lock.
take_lock() {
    exec 9>>"$LOCK_FILE"
    flock -w 600 9 || die "could not get the lock $LOCK_FILE within 600s"
}

need_root() {
    [[ $(id -u) -eq 0 ]] || die "this command must run as root"
}

check_stack_dir() {
    [[ $STACK_DIR == /* ]] || die "MCE_STACK_DIR must be absolute: $STACK_DIR"
    [[ $STACK_DIR =~ ^/[A-Za-z0-9._/-]+$ ]] || die "MCE_STACK_DIR may only contain [A-Za-z0-9._/-]: $STACK_DIR"
    case "$STACK_DIR" in
        / | /tmp | /tmp/ | /var | /etc | /usr | /root | /home) die "refusing to use $STACK_DIR as stack dir" ;;
    esac
}

missing_binaries() {
    local b
    for b in "${BINARIES[@]}"; do
        command -v "$b" >/dev/null 2>&1 || printf '%s\n' "$b"
    done
    # not on PATH: systemd installs it under lib/systemd
    [[ -x /lib/systemd/systemd-journal-remote || -x /usr/lib/systemd/systemd-journal-remote ]] ||
        printf '%s\n' systemd-journal-remote
    # not on PATH either: /usr/lib/postgresql/<major>/bin
    pg_newest_bin_dir >/dev/null || printf '%s\n' postgresql
}

# ----------------------------------------------------------------------------
# PostgreSQL binaries

# pg_bin_complete DIR: DIR has every one of PG_BINARIES (a client-only
# postgresql-client-NN package has a bin dir without the server).
pg_bin_complete() {
    local b
    for b in "${PG_BINARIES[@]}"; do
        [[ -x $1/$b ]] || return 1
    done
}

# Print the newest /usr/lib/postgresql/<major>/bin that has the server binaries.
pg_newest_bin_dir() {
    local d v found=
    while IFS= read -r v; do
        pg_bin_complete "/usr/lib/postgresql/$v/bin" && found="/usr/lib/postgresql/$v/bin"
    done < <(for d in /usr/lib/postgresql/*/; do
        [[ -d $d ]] && basename -- "$d"
    done | sort -V)
    [[ -n $found ]] || return 1
    printf '%s\n' "$found"
}

# Print the bin dir to run our cluster with: that of the major in its
# PG_VERSION (a data dir only runs with its own major), else the newest one
# (no cluster yet, or non-root, who cannot read the data dir).
pg_bin_dir() {
    local v
    if [[ -r $PG_DATA/PG_VERSION ]]; then
        v=$(tr -dc '0-9.' <"$PG_DATA/PG_VERSION")
        pg_bin_complete "/usr/lib/postgresql/$v/bin" ||
            die "the cluster in $PG_DATA is PostgreSQL $v, but /usr/lib/postgresql/$v/bin is missing (run: $SCRIPT_PATH down; $SCRIPT_PATH up)"
        printf '%s\n' "/usr/lib/postgresql/$v/bin"
        return 0
    fi
    pg_newest_bin_dir
}

# pg_clean_env COMMAND...: run COMMAND without the caller's PG* variables
# (PGHOST, PGSSLMODE, PGOPTIONS, ... would change what our tools connect to).
pg_clean_env() {
    local v
    local -a unset=()
    for v in $(compgen -e); do
        [[ $v == PG* ]] && unset+=(-u "$v")
    done
    env "${unset[@]}" "$@"
}

# as_postgres COMMAND...: run COMMAND as the system user postgres (initdb and
# the server refuse to run as root), from / (root's cwd may be closed to it).
as_postgres() {
    (cd / && pg_clean_env runuser -u "$PG_OS_USER" -- "$@" 9>&-)
}

require_binaries() {
    local missing
    missing=$(missing_binaries | tr '\n' ' ')
    [[ -z $missing ]] || die "missing binaries: ${missing}- run: $SCRIPT_PATH install"
    python3 -c 'import cryptography' 2>/dev/null ||
        die "python3 cannot import 'cryptography' (pip install trustme/cryptography, or apt-get install python3-cryptography)"
}

# Print the log tail of a failed service.
tail_log() {
    local f
    for f in "$@"; do
        if [[ -s $f ]]; then
            printf -- '----- last lines of %s -----\n' "$f" >&2
            tail -n 25 "$f" >&2 || true
        fi
    done
}

# probe tcp HOST PORT | probe dns HOST PORT | probe http URL
# Exit 0 if the thing answers properly.  Uses no proxies, only loopback.
probe() {
    python3 - "$@" <<'PY'
import socket, struct, sys, urllib.request

def tcp(host, port):
    with socket.create_connection((host, int(port)), timeout=2):
        return True

def dns_query(qname, qtype=1):
    q = struct.pack(">HHHHHH", 0x4D43, 0x0100, 1, 0, 0, 0)
    for label in qname.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\x00" + struct.pack(">HH", qtype, 1)

def check_answer(resp):
    ident, flags, qd, an = struct.unpack(">HHHH", resp[:8])
    return ident == 0x4D43 and (flags & 0x8000) and (flags & 0x000F) == 0 and an >= 1

def dns(host, port):
    q = dns_query("mx1.example.test")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, (host, int(port)))
        if not check_answer(s.recv(4096)):
            return False
    with socket.create_connection((host, int(port)), timeout=2) as s:
        s.sendall(struct.pack(">H", len(q)) + q)
        buf = b""
        while len(buf) < 2 or len(buf) < 2 + struct.unpack(">H", buf[:2])[0]:
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
        return check_answer(buf[2:])

def http(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=3) as r:
        return r.status == 200

try:
    kind, args = sys.argv[1], sys.argv[2:]
    ok = {"tcp": tcp, "dns": dns, "http": http}[kind](*args)
except Exception:
    ok = False
sys.exit(0 if ok else 1)
PY
}

# alive PID: the process exists and is not a zombie (a stopped Postfix master
# lingers as a zombie for a moment; counting it as running made "start" a no-op).
alive() {
    local st
    [[ -d /proc/$1 ]] || return 1
    read -r -a st <"/proc/$1/stat" 2>/dev/null || return 1
    # field 3 is the state; the command name (field 2) has no spaces for our daemons
    [[ ${st[2]:-Z} != Z && ${st[2]:-X} != X ]]
}

# Print the pid from PIDFILE if that process is alive and its command line
# mentions our stack dir (so we never act on a recycled pid or a system daemon).
our_pid() {
    local pidfile=$1 pid
    [[ -r $pidfile ]] || return 1
    pid=$(head -n 1 "$pidfile" 2>/dev/null | tr -dc '0-9')
    # /proc instead of "kill -0", so that "status" also works for non-root
    [[ -n $pid ]] && alive "$pid" || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$STACK_DIR" || return 1
    printf '%s\n' "$pid"
}

# wait_until DESCRIPTION "LOGFILES" COMMAND...
wait_until() {
    local desc=$1 logs=$2
    shift 2
    local deadline=$((SECONDS + WAIT_TIMEOUT))
    while ! "$@"; do
        if ((SECONDS >= deadline)); then
            # shellcheck disable=SC2086  # logs is a space separated list
            tail_log $logs
            die "timed out after ${WAIT_TIMEOUT}s waiting for $desc"
        fi
        sleep 0.2
    done
}

kill_pidfile() {
    local pidfile=$1 name=$2 pid i
    pid=$(our_pid "$pidfile") || { rm -f "$pidfile"; return 0; }
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name did not exit, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$pidfile"
}

# tcp_listening PORT: is something listening on $HOST:PORT?  Reads
# /proc/net/tcp instead of connecting, so status checks leave no
# "connect from"/"lost connection" noise in the Postfix and Dovecot logs.
tcp_listening() {
    local want
    want=$(printf '0100007F:%04X' "$1")
    awk -v want="$want" '$2 == want && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp
}
tcp_closed() { ! tcp_listening "$1"; }

# ----------------------------------------------------------------------------
# service checks

# Print the pid of our Postfix master: the pid in our queue's pid/master.pid
# if that is a live "master" process.  (Not "postfix status": that logs a
# line each time it runs.)
postfix_master_pid() {
    local pid
    [[ -r $PF_SPOOL/pid/master.pid ]] || return 1
    pid=$(head -n 1 "$PF_SPOOL/pid/master.pid" 2>/dev/null | tr -dc '0-9')
    [[ -n $pid ]] && alive "$pid" || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == master ]] || return 1
    printf '%s\n' "$pid"
}
postfix_running() {
    postfix_master_pid >/dev/null && return 0
    # Non-root cannot read master.pid (mode 0600); "status" then relies on the
    # listening ports (checked by postfix_up) plus the pid file's existence.
    [[ $(id -u) -ne 0 && -e $PF_SPOOL/pid/master.pid && ! -r $PF_SPOOL/pid/master.pid ]]
}

# pids of the smtpd processes of our Postfix master
postfix_smtpd_pids() {
    local mpid=$1 f comm st
    for f in /proc/[0-9]*; do
        read -r comm <"$f/comm" 2>/dev/null || continue
        [[ $comm == smtpd ]] || continue
        read -r -a st <"$f/stat" 2>/dev/null || continue
        [[ ${st[3]:-} == "$mpid" ]] && printf '%s\n' "${st[0]}"
    done
    return 0
}

# Postfix's smtpd keeps its connection to Dovecot's auth service open.  After
# Dovecot was restarted or reloaded that connection is (or, ~5 s later when
# Dovecot kills the old auth process, becomes) dead and the next AUTH in that
# smtpd fails with "454 4.7.0 Temporary authentication failure: Connection lost
# to authentication server".  "postfix reload" replaces the idle smtpd
# processes; wait (bounded) until the old ones are gone.
postfix_refresh_sasl() {
    local mpid pid i busy
    local -a old=()
    mpid=$(postfix_master_pid) || return 0
    mapfile -t old < <(postfix_smtpd_pids "$mpid")
    postfix -c "$PF_ETC" reload </dev/null >>"$PF_START_LOG" 2>&1 9>&- || die "postfix -c $PF_ETC reload failed"
    for ((i = 0; i < 50; i++)); do
        busy=0
        for pid in "${old[@]}"; do
            kill -0 "$pid" 2>/dev/null && busy=1
        done
        ((busy)) || return 0
        sleep 0.1
    done
    log "note: some smtpd processes are still serving clients after postfix reload"
}
# After an LMTP/Dovecot outage: deliver the deferred backlog now instead of
# after the (long) retry interval, and clear qmgr's "dead destination" state
# (otherwise new mail for the local domains would be deferred with "delivery
# temporarily suspended" for minimal_backoff_time).
postfix_retry_deferred() {
    if postfix_running; then
        postqueue -c "$PF_ETC" -f </dev/null >/dev/null 2>&1 9>&- || true
    fi
}

postfix_ports_up() {
    local p
    for p in $PORT_SMTP $PORT_SMTP_EXPIRED $PORT_SMTP_SELFSIGNED $PORT_SMTP_WRONGHOST $PORT_SUBMISSION $PORT_SMTPS; do
        tcp_listening "$p" || return 1
    done
    if verifiers_generated; then
        tcp_listening "$PORT_SUBMISSION_SIGNED" && tcp_listening "$PORT_INBOUND_VERIFIED" || return 1
    fi
}
postfix_up() { postfix_running && postfix_ports_up; }

dovecot_running() {
    our_pid "$DC_RUN/master.pid" >/dev/null && return 0
    # Non-root cannot read master.pid (mode 0600): look for our master process.
    [[ $(id -u) -ne 0 ]] || return 1
    local f
    local -a args
    for f in /proc/[0-9]*/cmdline; do
        mapfile -d '' -t args <"$f" 2>/dev/null || continue
        [[ ${args[0]:-} == *dovecot && "${args[*]:1}" == "-c $DC_CONF" ]] && return 0
    done
    return 1
}
dovecot_ports_up() {
    local p
    for p in $PORT_IMAP $PORT_IMAPS $PORT_AUTH; do
        tcp_listening "$p" || return 1
    done
}
dovecot_up() { dovecot_running && dovecot_ports_up; }

lmtp_enabled() { [[ -f $DC_PROTOCOLS ]] && grep -qw lmtp "$DC_PROTOCOLS"; }
lmtp_up() { dovecot_running && tcp_listening "$PORT_LMTP"; }

unbound_up() {
    our_pid "$UB_PID" >/dev/null && probe dns "$HOST" "$PORT_DNS" || return 1
    # with the verifiers: also on port 53 of VF_DNS_ADDR (OpenDMARC's resolver)
    [[ ! -f $VF_UNBOUND_DATA ]] || probe dns "$VF_DNS_ADDR" 53
}
prometheus_up() { our_pid "$PROM_PID" >/dev/null && probe http "http://$HOST:$PORT_PROMETHEUS/-/ready"; }
alertmanager_up() { our_pid "$AM_PID" >/dev/null && probe http "http://$HOST:$PORT_ALERTMANAGER/-/ready"; }

# Print the pid of our postmaster (first line of postmaster.pid).
postgresql_pid() { our_pid "$PG_DATA/postmaster.pid"; }
postgresql_running() {
    postgresql_pid >/dev/null && return 0
    # Non-root cannot enter the data dir (0700): look for our postmaster,
    # started by pg_ctl as "postgres -D DATA_DIR".
    [[ $(id -u) -ne 0 ]] || return 1
    local f data
    local -a args
    data=$(tr -s / <<<"$PG_DATA")  # pg_ctl passes -D with "//" squeezed
    for f in /proc/[0-9]*/cmdline; do
        mapfile -d '' -t args <"$f" 2>/dev/null || continue
        [[ ${args[0]:-} == */postgres && ${args[1]:-} == -D && ${args[2]:-} == "$data" ]] && return 0
    done
    return 1
}
# pg_isready over TCP as our role: no log line on the server (it hangs up at
# the password request, which PostgreSQL does not log).
postgresql_ready() {
    local bin
    bin=$(pg_bin_dir 2>/dev/null) || return 1
    pg_clean_env "$bin/pg_isready" -q -t 2 -h "$HOST" -p "$PORT_POSTGRESQL" -U "$PG_ROLE" -d "$PG_DATABASE" </dev/null 9>&-
}
postgresql_up() { postgresql_running && postgresql_ready; }

# Processes of an earlier postmaster of ours still exist: one killed with
# SIGKILL stays a zombie until init reaps it, and its children exit only when
# they notice.  A new postmaster refuses to start meanwhile ("lock file
# postmaster.pid already exists", "pre-existing shared memory block is still
# in use").
postgresql_leftovers() {
    local old st f first
    old=$(head -n 1 "$PG_DATA/postmaster.pid" 2>/dev/null | tr -dc '0-9') || true
    if [[ -n $old ]] && read -r -a st 2>/dev/null <"/proc/$old/stat"; then
        [[ ${st[2]} == [ZX] || ${st[1]} == "(postgres)" ]] && return 0
    fi
    for f in /proc/[0-9]*/cmdline; do
        first=
        IFS= read -r -d "" first 2>/dev/null <"$f" || true  # titles may lack the final NUL
        [[ $first == "postgres: $PG_CLUSTER_NAME: "* ]] && return 0
    done
    return 1
}
postgresql_gone() { ! postgresql_leftovers; }

# The verifiers' milters: our three daemons (pid files) and their ports.
# (policyd-spf has no daemon: Postfix spawns it per connection.)
verifiers_running() {
    our_pid "$VF_SIGN_PID" >/dev/null || our_pid "$VF_VERIFY_PID" >/dev/null || our_pid "$VF_DMARC_PID" >/dev/null
}
verifiers_up() {
    local f
    for f in "$VF_SIGN_PID" "$VF_VERIFY_PID" "$VF_DMARC_PID"; do
        our_pid "$f" >/dev/null || return 1
    done
    tcp_listening "$PORT_MILTER_SIGN" && tcp_listening "$PORT_MILTER_VERIFY" && tcp_listening "$PORT_MILTER_DMARC"
}

service_up() { "${1}_up"; }

any_running() {
    postfix_running || dovecot_running || our_pid "$UB_PID" >/dev/null ||
        our_pid "$PROM_PID" >/dev/null || our_pid "$AM_PID" >/dev/null || postgresql_running || verifiers_running
}

all_up() {
    local s
    for s in "${SERVICES[@]}"; do
        service_up "$s" || return 1
    done
}

# ----------------------------------------------------------------------------
# install

cmd_install() {
    need_root
    local missing
    missing=$(missing_binaries | grep -v '^python3$' || true)
    if [[ -z $missing ]]; then
        log "all binaries present, skipping apt"
    else
        log "missing: $(echo "$missing" | tr '\n' ' ')- installing packages"
        export DEBIAN_FRONTEND=noninteractive
        printf '%s\n' \
            'postfix postfix/main_mailer_type select No configuration' \
            "postfix postfix/mailname string $MX_HOSTNAME" | debconf-set-selections
        # Keep the package scripts from starting the system-wide daemons.
        local policy=/usr/sbin/policy-rc.d created_policy=
        if [[ ! -e $policy ]]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod 0755 "$policy"
            created_policy=1
            # shellcheck disable=SC2064  # expand now
            trap "rm -f '$policy'" EXIT
        fi
        if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
            apt-get update
        fi
        if ! apt-get install -y --no-install-recommends "${PACKAGES[@]}"; then
            apt-get update
            apt-get install -y --no-install-recommends "${PACKAGES[@]}"
        fi
        if [[ -n $created_policy ]]; then
            rm -f "$policy"
            trap - EXIT
        fi
        missing=$(missing_binaries | tr '\n' ' ')
        [[ -z $missing ]] || die "still missing after install: $missing"
    fi
    python3 -c 'import cryptography' 2>/dev/null ||
        log "WARNING: python3 cannot import 'cryptography' (needed by teststack_certs.py); pip install trustme"
    return 0
}

# ----------------------------------------------------------------------------
# generation

prepare_stack_dir() {
    if [[ -e $STACK_DIR ]]; then
        [[ -d $STACK_DIR ]] || die "$STACK_DIR exists and is not a directory"
        if [[ -n $(ls -A "$STACK_DIR") && ! -e $STACK_DIR/$MARKER_NAME ]]; then
            die "$STACK_DIR is not empty and was not created by this script (no $MARKER_NAME); refusing to wipe it"
        fi
        rm -rf --one-file-system "$STACK_DIR"
    fi
    mkdir -p "$STACK_DIR"
    chown root:root "$STACK_DIR"
    chmod 0755 "$STACK_DIR"
    : >"$STACK_DIR/$MARKER_NAME"
    mkdir -p "$CERT_DIR" "$PF_ETC" "$DC_DIR" "$DC_RUN" "$DC_STATE" "$DC_DIR/sieve" \
        "$UB_DIR" "$PROM_DIR" "$PROM_DATA" "$PROM_RULES" "$PROM_TARGETS" "$AM_DIR" "$AM_DATA" "$PG_DIR"
    mkdir -p "$MAIL_DIR" "$HOME_DIR"
    chown "$VMAIL_USER:$VMAIL_USER" "$MAIL_DIR" "$HOME_DIR"
    chmod 0755 "$MAIL_DIR" "$HOME_DIR"
}

ensure_vmail_user() {
    if ! getent passwd "$VMAIL_USER" >/dev/null; then
        log "creating system user $VMAIL_USER"
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin --comment "mail-continuity-exporter test mail" "$VMAIL_USER"
    fi
}

gen_certs() {
    python3 "$CERTS_HELPER" "$CERT_DIR" >/dev/null
    local k
    for k in "$CERT_DIR"/*.key; do
        [[ $(basename "$k") == ca.key ]] && continue
        chgrp postfix "$k"
        chmod 0640 "$k"
    done
}

# OAuth2: the key pair Dovecot validates bearer tokens with, and the
# certificate of the tests' token service (tests/oauth_server.py).  Needs the
# CA (gen_certs).  Writes:
#   $OAUTH_KEY             RSA 2048 private key (openssl genpkey, mode 0600):
#                          tests sign their JWT access tokens with it (RS256)
#   $OAUTH_PUB             its public key (PEM)
#   $OAUTH_KID_FILE        the key id: the RFC 7638 JWK thumbprint of the key
#   $OAUTH_KEYS/default/RS256/KID
#                          the public key where Dovecot's local_validation_key_dict
#                          (fs:posix, prefix $OAUTH_KEYS/) looks it up: tokens
#                          without an "azp" claim use "default"
#   $CERT_DIR/idp{.pem,.key,-chain.pem}
#                          issued by the CA, CN localhost, SAN DNS localhost and
#                          IP 127.0.0.1, 90 days; added to certs.json as "idp"
gen_oauth2() {
    rm -rf --one-file-system "$OAUTH_DIR"
    mkdir -p "$OAUTH_DIR"
    chmod 0755 "$OAUTH_DIR"
    (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$OAUTH_KEY" 2>/dev/null) ||
        die "openssl genpkey failed for $OAUTH_KEY"
    openssl pkey -in "$OAUTH_KEY" -pubout -out "$OAUTH_PUB" 2>/dev/null || die "openssl pkey -pubout failed for $OAUTH_KEY"
    chmod 0644 "$OAUTH_PUB"
    python3 - "$OAUTH_PUB" "$OAUTH_KEYS/default/$OAUTH_ALG" "$OAUTH_KID_FILE" "$CERT_DIR" "$SCRIPT_DIR" <<'PY'
import base64, hashlib, json, os, sys, time
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import serialization

pub_path, key_dir, kid_file, certs = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4])
sys.path.insert(0, sys.argv[5])
import teststack_certs  # noqa: E402  (make_leaf: the CA-issued leaves of the other certificates)

def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

def uint(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

pub = serialization.load_pem_public_key(pub_path.read_bytes())
numbers = pub.public_numbers()
# RFC 7638: SHA-256 over the JWK's required members, sorted, no whitespace
jwk = json.dumps({"e": uint(numbers.e), "kty": "RSA", "n": uint(numbers.n)}, separators=(",", ":"), sort_keys=True)
kid = b64url(hashlib.sha256(jwk.encode()).digest())  # [A-Za-z0-9_-]: nothing for Dovecot to escape
key_dir.mkdir(parents=True)
for d in (key_dir, key_dir.parent, key_dir.parent.parent):
    d.chmod(0o755)
(key_dir / kid).write_bytes(pub_path.read_bytes())
(key_dir / kid).chmod(0o644)
kid_file.write_text(kid + "\n")
kid_file.chmod(0o644)

ca_cert = x509.load_pem_x509_certificate((certs / "ca.pem").read_bytes())
ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), password=None)
now, sans = int(time.time()), ["localhost", "127.0.0.1"]
cert, key = teststack_certs.make_leaf("localhost", sans, now - 3600, now + 90 * 86400, (ca_cert, ca_key))
pem = cert.public_bytes(serialization.Encoding.PEM)
(certs / "idp.pem").write_bytes(pem)
(certs / "idp-chain.pem").write_bytes(pem + (certs / "ca.pem").read_bytes())
fd = os.open(certs / "idp.key", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
with os.fdopen(fd, "wb") as fh:
    fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption()))
described = json.loads((certs / "certs.json").read_text())
described["idp"] = {
    "cert": str(certs / "idp.pem"),
    "key": str(certs / "idp.key"),
    "chain": str(certs / "idp-chain.pem"),
    "not_before": teststack_certs._bound(cert, "before"),
    "not_after": teststack_certs._bound(cert, "after"),
    "subject_cn": "localhost",
    "sans": sans,
}
(certs / "certs.json").write_text(json.dumps(described, indent=2, sort_keys=True) + "\n")
PY
    [[ -s $OAUTH_KID_FILE ]] || die "gen_oauth2: no key id in $OAUTH_KID_FILE"
}

# "up" on a running stack made by a teststack.sh without OAuth2: add what
# gen_oauth2 makes, the users that are missing (oauth@example.test gets a new
# password; the others keep theirs) to Dovecot's users file and Postfix's
# virtual_mailboxes, and Dovecot's new auth settings (dovecot.conf is
# regenerated; the LMTP on/off state is kept).  A running Dovecot is reloaded
# and Postfix's smtpd processes are replaced (postfix_refresh_sasl: fresh
# connections to the new auth process, virtual_mailboxes re-read).  The
# caller rewrites stack.json.  PostgreSQL, Unbound, Prometheus and
# Alertmanager are not touched.
add_oauth2() {
    local u protocols=
    log "the stack has no OAuth2 setup yet, adding it"
    gen_oauth2
    for u in "${USERS[@]}"; do
        if ! cut -d: -f1 "$DC_USERS" | grep -qxF -- "$u"; then
            log "adding the user $u"
            printf '%s:{PLAIN}%s::::::\n' "$u" "$(openssl rand -hex 12)" >>"$DC_USERS"
        fi
        if ! cut -d' ' -f1 "$PF_ETC/virtual_mailboxes" | grep -qxF -- "$u"; then
            printf '%s OK\n' "$u" >>"$PF_ETC/virtual_mailboxes"
        fi
    done
    [[ -f $DC_PROTOCOLS ]] && protocols=$(<"$DC_PROTOCOLS")
    gen_dovecot
    [[ -n $protocols ]] && printf '%s\n' "$protocols" >"$DC_PROTOCOLS"
    if dovecot_running; then
        log "reloading dovecot"
        reload_dovecot
        wait_until "dovecot ports" "$DC_START_LOG $DC_LOG" dovecot_ports_up
    fi
    postfix_refresh_sasl
}

# stack.json was written by a teststack.sh that knows OAuth2.
stack_has_oauth2() { grep -q '^  "oauth2": {' "$STACK_JSON" 2>/dev/null; }
# ... that knows the verifiers.
stack_has_verifiers() { grep -q '^  "verifiers": {' "$STACK_JSON" 2>/dev/null; }

gen_passwords() {
    local u
    : >"$DC_USERS"
    chmod 0640 "$DC_USERS"
    chgrp dovecot "$DC_USERS"
    for u in "${USERS[@]}"; do
        printf '%s:{PLAIN}%s::::::\n' "$u" "$(openssl rand -hex 12)" >>"$DC_USERS"
    done
    gen_postgresql_password
}

# The password of the PostgreSQL role (hex: nothing to quote in SQL or URLs).
gen_postgresql_password() {
    mkdir -p "$PG_DIR"
    (umask 077 && openssl rand -hex 16 >"$PG_PASSWORD")
}

register_alternate_config_dir() {
    # Unprivileged postqueue/postdrop only accept "-c DIR" when DIR is listed
    # in the default instance's alternate_config_directories.  The default
    # instance itself is never started.
    local main=/etc/postfix/main.cf cur d
    if [[ ! -f $main ]]; then
        mkdir -p /etc/postfix
        cat >"$main" <<EOF
# Minimal main.cf created by mail-continuity-exporter scripts/teststack.sh.
# The default Postfix instance is not used or started by the test stack; this
# file only exists so alternate_config_directories can be declared.
compatibility_level = 3.6
EOF
    fi
    cur=$(postconf -c /etc/postfix -h alternate_config_directories 2>/dev/null || true)
    for d in ${cur//,/ }; do
        [[ $d == "$PF_ETC" ]] && return 0
    done
    postconf -c /etc/postfix -e "alternate_config_directories = ${cur:+$cur, }$PF_ETC"
}

gen_postfix() {
    local c="$CERT_DIR" u
    cat >"$PF_ETC/main.cf" <<EOF
# Generated by teststack.sh - private Postfix instance for tests.
compatibility_level = 3.6
queue_directory = $PF_SPOOL
data_directory = $PF_DATA
mail_owner = postfix
setgid_group = postdrop
syslog_name = postfix-mce
maillog_file = $PF_LOG
maillog_file_prefixes = /var, /dev/stdout, $STACK_DIR

myhostname = $MX_HOSTNAME
mydomain = example.test
myorigin = \$myhostname
mydestination =
inet_interfaces = $HOST
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relay_domains =
relayhost = [$HOST]:$PORT_DEAD_RELAY
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtpd_peername_lookup = no
biff = no
append_dot_mydomain = no
recipient_delimiter = +
alias_maps =
alias_database =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled in the test stack

virtual_mailbox_domains = example.test, archive.example.test
virtual_mailbox_maps = texthash:\$config_directory/virtual_mailboxes
virtual_alias_maps =
virtual_transport = lmtp:inet:$HOST:$PORT_LMTP
lmtp_connection_cache_on_demand = no
lmtp_tls_security_level = none
smtp_tls_security_level = none

smtpd_banner = \$myhostname ESMTP mce-teststack
smtpd_relay_restrictions = permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination
smtpd_recipient_restrictions = check_recipient_access texthash:\$config_directory/recipient_access
smtpd_tls_security_level = may
smtpd_tls_cert_file = $c/valid-chain.pem
smtpd_tls_key_file = $c/valid.key
smtpd_tls_loglevel = 1
smtpd_tls_received_header = yes
smtpd_tls_auth_only = yes
smtpd_sasl_auth_enable = no
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:$HOST:$PORT_AUTH

maximal_queue_lifetime = 5d
bounce_queue_lifetime = 5d
queue_run_delay = 1h
minimal_backoff_time = 1h
maximal_backoff_time = 4h
delay_warning_time = 0h
EOF
    if verifiers_generated; then
        cat >>"$PF_ETC/main.cf" <<EOF

# Mail authentication verifiers (gen_verifiers), used only by the master.cf
# services submission_signed ($PORT_SUBMISSION_SIGNED) and inbound_verified ($PORT_INBOUND_VERIFIED).
mce_signing_milters = inet:$HOST:$PORT_MILTER_SIGN
mce_verifying_milters = inet:$HOST:$PORT_MILTER_VERIFY, inet:$HOST:$PORT_MILTER_DMARC
mce_inbound_recipient_restrictions = check_recipient_access texthash:\$config_directory/recipient_access,
    check_policy_service unix:private/policyd-spf
policyd-spf_time_limit = 3600
EOF
    fi

    local bad name port
    {
        printf '# Generated by teststack.sh.  All services unchrooted.\n'
        printf '# service type  private unpriv  chroot  wakeup  maxproc command\n'
        printf '%s:%s inet n - n - - smtpd\n' "$HOST" "$PORT_SMTP"
        for bad in "expired $PORT_SMTP_EXPIRED" "selfsigned $PORT_SMTP_SELFSIGNED" "wronghost $PORT_SMTP_WRONGHOST"; do
            read -r name port <<<"$bad"
            printf '%s:%s inet n - n - - smtpd\n' "$HOST" "$port"
            printf '  -o syslog_name=postfix-mce/%s\n' "$name"
            printf '  -o smtpd_tls_cert_file=%s/%s-chain.pem\n' "$c" "$name"
            printf '  -o smtpd_tls_key_file=%s/%s.key\n' "$c" "$name"
        done
        printf '%s:%s inet n - n - - smtpd\n' "$HOST" "$PORT_SUBMISSION"
        printf '  -o syslog_name=postfix-mce/submission\n'
        printf '  -o smtpd_tls_security_level=encrypt\n'
        printf '  -o smtpd_sasl_auth_enable=yes\n'
        printf '  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n'
        printf '%s:%s inet n - n - - smtpd\n' "$HOST" "$PORT_SMTPS"
        printf '  -o syslog_name=postfix-mce/smtps\n'
        printf '  -o smtpd_tls_wrappermode=yes\n'
        printf '  -o smtpd_sasl_auth_enable=yes\n'
        printf '  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n'
        if verifiers_generated; then
            # submission, plus DKIM signing; every message accepted here is
            # relayed to inbound_verified, whatever its recipients
            printf '%s:%s inet n - n - - smtpd\n' "$HOST" "$PORT_SUBMISSION_SIGNED"
            printf '  -o syslog_name=postfix-mce/submission_signed\n'
            printf '  -o smtpd_tls_security_level=encrypt\n'
            printf '  -o smtpd_sasl_auth_enable=yes\n'
            printf '  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject\n'
            printf '  -o smtpd_milters=%s\n' "\$mce_signing_milters"
            printf '  -o content_filter=smtp:[%s]:%s\n' "$HOST" "$PORT_INBOUND_VERIFIED"
            # port-25 role with SPF, DKIM and DMARC verification; a hostname of
            # its own, or Postfix's smtp client refuses it ("loops back to myself")
            printf '%s:%s inet n - n - - smtpd\n' "$HOST" "$PORT_INBOUND_VERIFIED"
            printf '  -o syslog_name=postfix-mce/inbound_verified\n'
            printf '  -o myhostname=%s\n' "$VF_AUTHSERV_ID"
            printf '  -o smtpd_milters=%s\n' "\$mce_verifying_milters"
            printf '  -o smtpd_recipient_restrictions=%s\n' "\$mce_inbound_recipient_restrictions"
            printf 'policyd-spf unix - n n - 0 spawn\n'
            printf '  user=%s argv=/usr/bin/python3 %s %s\n' "$(<"$VF_DIR/policyd-spf.user")" "$VF_SPF_WRAPPER" "$VF_SPF_CONF"
        fi
        cat <<'EOF'
pickup     unix  n       -       n       60      1       pickup
cleanup    unix  n       -       n       -       0       cleanup
qmgr       unix  n       -       n       300     1       qmgr
tlsmgr     unix  -       -       n       1000?   1       tlsmgr
rewrite    unix  -       -       n       -       -       trivial-rewrite
bounce     unix  -       -       n       -       0       bounce
defer      unix  -       -       n       -       0       bounce
trace      unix  -       -       n       -       0       bounce
verify     unix  -       -       n       -       1       verify
flush      unix  n       -       n       1000?   0       flush
proxymap   unix  -       -       n       -       -       proxymap
proxywrite unix  -       -       n       -       1       proxymap
smtp       unix  -       -       n       -       -       smtp
relay      unix  -       -       n       -       -       smtp
showq      unix  n       -       n       -       -       showq
error      unix  -       -       n       -       -       error
retry      unix  -       -       n       -       -       error
discard    unix  -       -       n       -       -       discard
local      unix  -       n       n       -       -       local
virtual    unix  -       n       n       -       -       virtual
lmtp       unix  -       -       n       -       -       lmtp
anvil      unix  -       -       n       -       1       anvil
scache     unix  -       -       n       -       1       scache
postlog    unix-dgram n  -       n       -       1       postlogd
EOF
    } >"$PF_ETC/master.cf"

    cat >"$PF_ETC/recipient_access" <<'EOF'
tempfail@example.test 450 4.2.0 try later
reject@example.test 554 5.7.1 no
EOF
    : >"$PF_ETC/virtual_mailboxes"
    for u in "${USERS[@]}"; do
        printf '%s OK\n' "$u" >>"$PF_ETC/virtual_mailboxes"
    done

    mkdir -p "$PF_SPOOL" "$PF_DATA"
    chown root:root "$PF_DIR" "$PF_ETC" "$PF_SPOOL"
    chmod 0755 "$PF_DIR" "$PF_ETC" "$PF_SPOOL"
    chown postfix:postfix "$PF_DATA"
    chmod 0700 "$PF_DATA"

    register_alternate_config_dir
    # "check" runs post-install create-missing (queue subdirectories with the
    # right owners: postfix, postdrop for maildrop/public) and then warns about
    # permission problems.
    local out
    if ! out=$(postfix -c "$PF_ETC" check 2>&1); then
        printf '%s\n' "$out" >&2
        die "postfix -c $PF_ETC check failed"
    fi
    [[ -z $out ]] || printf '%s\n' "$out" >"$PF_DIR/check.log"
}

gen_dovecot() {
    local uid gid dh_line=""
    uid=$(id -u "$VMAIL_USER")
    gid=$(id -g "$VMAIL_USER")
    [[ -r /usr/share/dovecot/dh.pem ]] && dh_line="ssl_dh = </usr/share/dovecot/dh.pem"

    printf 'protocols = imap lmtp\n' >"$DC_PROTOCOLS"
    cat >"$DC_CONF" <<EOF
# Generated by teststack.sh - private Dovecot instance for tests.
!include $DC_PROTOCOLS
instance_name = mce-teststack
base_dir = $DC_RUN
state_dir = $DC_STATE
listen = $HOST
log_path = $DC_LOG
log_timestamp = "%Y-%m-%d %H:%M:%S.%{usecs} "
shutdown_clients = yes

ssl = yes
ssl_cert = <$CERT_DIR/valid-chain.pem
ssl_key = <$CERT_DIR/valid.key
$dh_line
ssl_min_protocol = TLSv1.2

# Plaintext auth only on "secured" connections.  Dovecot counts loopback
# connections as secured, so plain LOGIN on $PORT_IMAP works without STARTTLS here.
disable_plaintext_auth = yes
# XOAUTH2 and OAUTHBEARER go only to the oauth2 passdb below; PLAIN, LOGIN
# and lookups without a mechanism (LMTP's and doveadm's user checks) only to
# passwd-file.
auth_mechanisms = plain login xoauth2 oauthbearer
auth_username_format = %Lu

first_valid_uid = $uid
last_valid_uid = $uid
first_valid_gid = $gid
last_valid_gid = $gid
mail_uid = $uid
mail_gid = $gid
mail_location = maildir:$MAIL_DIR/%d/%n
mail_privileged_group =
# Fast, penalty-free auth failures: tests do wrong-password logins from
# 127.0.0.1 and must not slow down later logins (anvil auth penalty is
# disabled by making its socket unusable, as documented by Dovecot).
auth_failure_delay = 0 secs
service anvil {
  unix_listener anvil-auth-penalty {
    mode = 0
  }
}

passdb {
  driver = passwd-file
  mechanisms = plain login none
  args = scheme=PLAIN username_format=%Lu $DC_USERS
}
# OAuth2 bearer tokens (JWT), validated locally: see $DC_OAUTH2_CONF
passdb {
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = $DC_OAUTH2_CONF
}
userdb {
  driver = static
  args = uid=$uid gid=$gid home=$HOME_DIR/%Ld/%Ln
}

namespace inbox {
  inbox = yes
  mailbox Junk {
    auto = subscribe
    special_use = \\Junk
  }
}

# IDLE: inotify-driven notifications, plus a 1 s fallback poll.
imap_idle_notify_interval = 10 secs
mailbox_idle_check_interval = 1 secs

recipient_delimiter = +
lmtp_save_to_detail_mailbox = no
lda_mailbox_autocreate = yes
postmaster_address = postmaster@example.test
hostname = $MX_HOSTNAME

service imap-login {
  inet_listener imap {
    address = $HOST
    port = $PORT_IMAP
  }
  inet_listener imaps {
    address = $HOST
    port = $PORT_IMAPS
    ssl = yes
  }
}

service lmtp {
  inet_listener lmtp {
    address = $HOST
    port = $PORT_LMTP
  }
}

service auth {
  inet_listener auth-postfix {
    address = $HOST
    port = $PORT_AUTH
  }
}

protocol lmtp {
  mail_plugins = \$mail_plugins sieve
}

plugin {
  sieve_before = $DC_SIEVE
}
EOF

    # Read by the auth process when it starts; the key files at each lookup
    # (gen_oauth2 makes them).  Dovecot 2.3.19 checks the JWT's signature
    # (typ JWT, alg and kid from the header; a missing kid is "default"), exp
    # (required), nbf and iat (not in the future), sub (required), iss (one of
    # "issuers"), then that the username_attribute claim equals the login
    # name (both %Lu).  It does not check "aud".  A token with an "azp" claim
    # is looked up under $OAUTH_KEYS/<azp>/ instead of default/.
    cat >"$DC_OAUTH2_CONF" <<EOF
# Generated by teststack.sh - Dovecot's oauth2 passdb (XOAUTH2, OAUTHBEARER).
introspection_mode = local
local_validation_key_dict = fs:posix:prefix=$OAUTH_KEYS/
issuers = $OAUTH_ISSUER
username_attribute = $OAUTH_USERNAME_ATTRIBUTE
username_format = %Lu
EOF
    chmod 0644 "$DC_OAUTH2_CONF"

    cat >"$DC_SIEVE" <<'EOF'
require ["fileinto", "mailbox"];
if header :is "X-Test-Junk" "yes" {
  fileinto :create "Junk";
  stop;
}
EOF
    sievec "$DC_SIEVE" || die "sievec failed for $DC_SIEVE"
    chmod 0644 "$DC_DIR"/sieve/*
    doveconf -c "$DC_CONF" -n >"$DC_DIR/doveconf.txt" 2>&1 || {
        tail_log "$DC_DIR/doveconf.txt"
        die "doveconf rejected $DC_CONF"
    }
}

# The DNSSEC-signed zones dnssec.test and bogus.test, served by Unbound as
# auth-zones (see gen_unbound) and validated against their own trust anchors.
# Needs the certificates (the TLSA records hold their SPKI digests), so it
# runs after gen_certs and before gen_unbound.  Writes into $DNSSEC_DIR:
#   ZONE.zone     the unsigned zone
#   ZONE.signed   the zone signed with ldns-signzone (NSEC, signatures valid
#                 from now for ldns-signzone's default 4 weeks); for bogus.test
#                 the RRSIG over the TLSA RRset is then corrupted
#   ZONE.anchor   the zone's KSK (DNSKEY, flags 257): Unbound's trust-anchor-file
#   keys/         KZONE.+013+TAG.{key,private,ds} from ldns-keygen
#                 (ECDSAP256SHA256, one KSK and one ZSK per zone)
# File names carry no key tags, so unbound.conf and stack.json do not change
# from one "up" to the next.
gen_dnssec() {
    local zone ksk zsk
    mkdir -p "$DNSSEC_DIR/keys"
    chmod 0700 "$DNSSEC_DIR/keys"
    python3 - "$DNSSEC_DIR" "$CERT_DIR" "$PORT_SMTP_SELFSIGNED" <<'PY'
import hashlib, sys
from pathlib import Path
from cryptography import x509
from cryptography.hazmat.primitives import serialization

out, certs, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

def spki_sha256(name):
    """TLSA 3 1 1 data: SHA-256 of the DER SubjectPublicKeyInfo of CERT_DIR/NAME.pem."""
    cert = x509.load_pem_x509_certificate((certs / f"{name}.pem").read_bytes())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).hexdigest()

selfsigned, valid = spki_sha256("selfsigned"), spki_sha256("valid")
# mismatch.dnssec.test must name a key that port `port` (selfsigned cert) does not present
if selfsigned == valid:
    sys.exit("gen_dnssec: the selfsigned and valid certificates share a key")

def zone(origin, records):
    head = [
        f"{origin}. 300 IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60",
        f"{origin}. 300 IN NS ns.{origin}.",
        f"ns.{origin}. 300 IN A 127.0.0.1",
    ]
    (out / f"{origin}.zone").write_text("\n".join(head + records) + "\n")

zone("dnssec.test", [
    # DANE that matches: the TLSA names the key of the selfsigned cert on `port`
    "dnssec.test. 300 IN MX 10 mx.dnssec.test.",
    "mx.dnssec.test. 300 IN A 127.0.0.1",
    f"_{port}._tcp.mx.dnssec.test. 300 IN TLSA 3 1 1 {selfsigned}",
    # DANE that does not match: the TLSA names the key of the valid cert
    "mismatch.dnssec.test. 300 IN MX 10 mxbad.dnssec.test.",
    "mxbad.dnssec.test. 300 IN A 127.0.0.1",
    f"_{port}._tcp.mxbad.dnssec.test. 300 IN TLSA 3 1 1 {valid}",
    # signed, but no TLSA (validated NXDOMAIN)
    "nodane.dnssec.test. 300 IN MX 10 mxplain.dnssec.test.",
    "mxplain.dnssec.test. 300 IN A 127.0.0.1",
])
zone("bogus.test", [
    "bogus.test. 300 IN MX 10 mx.bogus.test.",
    "mx.bogus.test. 300 IN A 127.0.0.1",
    f"_{port}._tcp.mx.bogus.test. 300 IN TLSA 3 1 1 {selfsigned}",
])
PY
    for zone in "${DNSSEC_ZONES[@]}"; do
        ksk=$(cd "$DNSSEC_DIR/keys" && ldns-keygen -a ECDSAP256SHA256 -k "$zone") ||
            die "ldns-keygen (KSK) failed for $zone"
        zsk=$(cd "$DNSSEC_DIR/keys" && ldns-keygen -a ECDSAP256SHA256 "$zone") ||
            die "ldns-keygen (ZSK) failed for $zone"
        cp "$DNSSEC_DIR/keys/$ksk.key" "$DNSSEC_DIR/$zone.anchor"
        ldns-signzone -f "$DNSSEC_DIR/$zone.signed" "$DNSSEC_DIR/$zone.zone" \
            "$DNSSEC_DIR/keys/$ksk" "$DNSSEC_DIR/keys/$zsk" || die "ldns-signzone failed for $zone"
    done
    # bogus.test: break the signature over the TLSA RRset only, so MX and A
    # still validate, TLSA is SERVFAIL, and a query with CD set gets the record.
    python3 - "$DNSSEC_DIR/bogus.test.signed" "_$PORT_SMTP_SELFSIGNED._tcp.mx.bogus.test." <<'PY'
import base64, sys
from pathlib import Path

path, owner = Path(sys.argv[1]), sys.argv[2]
lines, hits = [], 0
for line in path.read_text().splitlines():
    f = line.split()
    # OWNER TTL IN RRSIG TYPE-COVERED ALG LABELS ORIG-TTL EXP INC TAG SIGNER SIGNATURE
    if len(f) == 13 and f[0] == owner and f[3] == "RRSIG" and f[4] == "TLSA":
        sig = bytes(b ^ 0x5A for b in base64.b64decode(f[12]))
        line = "\t".join(f[:12] + [base64.b64encode(sig).decode()])
        hits += 1
    lines.append(line)
if hits != 1:
    sys.exit(f"gen_dnssec: expected one RRSIG over the TLSA of {owner} in {path}, found {hits}")
path.write_text("\n".join(lines) + "\n")
PY
}

# The mail authentication verifiers: what gen_verifiers makes decides
# whether gen_postfix and gen_unbound add their parts (tests/test_teststack_offset.py
# runs those generators alone: then nothing of this appears).
verifiers_generated() { [[ -f $VF_SIGN_CONF ]]; }

# dkim_txt_record NAME KEYFILE: an Unbound local-data line with the DKIM key
# record of the public half of KEYFILE, split into strings of <= 255 chars.
dkim_txt_record() {
    local name=$1 p txt strings=""
    p=$(openssl pkey -in "$2" -pubout -outform DER 2>/dev/null | base64 -w0) || die "openssl pkey -pubout failed for $2"
    [[ -n $p ]] || die "no public key from $2"
    txt="v=DKIM1; k=rsa; p=$p"
    while [[ -n $txt ]]; do
        strings+=" \"${txt:0:255}\""
        txt=${txt:255}
    done
    printf "local-data: '%s. 300 IN TXT%s'\n" "$name" "$strings"
}

# Receiver-side mail authentication (see the header): OpenDKIM as signer and
# as verifier, OpenDMARC, policyd-spf.  Runs before gen_postfix and
# gen_unbound.  Writes into $VF_DIR:
#   keys/DOMAIN.key      RSA 2048 signing keys (mode 0600), one per test domain;
#                        keys/wrongkey.test-published.key is the key published
#                        for wrongkey.test instead of the one it is signed with
#   keytable, signingtable, sign-internal-hosts   the signer's data sets
#   opendkim-sign.conf, opendkim-verify.conf, opendmarc.conf   the milters
#   libunbound.conf      OpenDKIM's resolver: forwards everything to the
#                        stack's Unbound (127.0.0.1@PORT_DNS)
#   resolv.conf          "nameserver VF_DNS_ADDR", bind-mounted over
#                        /etc/resolv.conf in OpenDMARC's private mount namespace
#   no-hosts             192.0.2.255: InternalHosts/IgnoreHosts without loopback
#   policyd-spf.conf, policyd-spf.py   policyd-spf's config and the wrapper
#                        Postfix spawns (DNS: the stack's Unbound)
#   unbound-local.conf   the test domains' DNS data, included by unbound.conf
gen_verifiers() {
    local d f spf_user
    rm -rf --one-file-system "$VF_DIR"
    mkdir -p "$VF_KEYS"
    chmod 0755 "$VF_DIR"
    chmod 0700 "$VF_KEYS"
    for d in "$VF_DOMAIN_SIGNED" "$VF_DOMAIN_WRONGKEY" "$VF_DOMAIN_SPFFAIL" "$VF_DOMAIN_WRONGKEY-published"; do
        (umask 077 && openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$VF_KEYS/$d.key" 2>/dev/null) ||
            die "openssl genpkey failed for $VF_KEYS/$d.key"
    done

    {
        printf '# Generated by teststack.sh - DNS data of the verifiers test domains\n'
        printf '# (keys made at "up"; see gen_verifiers)\n'
        # signed.test: SPF pass from loopback, the signing key published, DMARC p=reject
        printf "local-data: '%s. 300 IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"'\n" "$VF_DOMAIN_SIGNED"
        dkim_txt_record "$VF_SELECTOR._domainkey.$VF_DOMAIN_SIGNED" "$VF_KEYS/$VF_DOMAIN_SIGNED.key"
        printf "local-data: '_dmarc.%s. 300 IN TXT \"v=DMARC1; p=reject\"'\n" "$VF_DOMAIN_SIGNED"
        # wrongkey.test: SPF neutral, another key published than the one it is signed with
        printf "local-data: '%s. 300 IN TXT \"v=spf1 ?all\"'\n" "$VF_DOMAIN_WRONGKEY"
        dkim_txt_record "$VF_SELECTOR._domainkey.$VF_DOMAIN_WRONGKEY" "$VF_KEYS/$VF_DOMAIN_WRONGKEY-published.key"
        printf "local-data: '_dmarc.%s. 300 IN TXT \"v=DMARC1; p=reject\"'\n" "$VF_DOMAIN_WRONGKEY"
        # spffail.test: SPF fails for loopback, DKIM passes (aligned: DMARC passes)
        printf "local-data: '%s. 300 IN TXT \"v=spf1 ip4:192.0.2.0/24 -all\"'\n" "$VF_DOMAIN_SPFFAIL"
        dkim_txt_record "$VF_SELECTOR._domainkey.$VF_DOMAIN_SPFFAIL" "$VF_KEYS/$VF_DOMAIN_SPFFAIL.key"
        printf "local-data: '_dmarc.%s. 300 IN TXT \"v=DMARC1; p=quarantine\"'\n" "$VF_DOMAIN_SPFFAIL"
    } >"$VF_UNBOUND_DATA"

    printf '192.0.2.255\n' >"$VF_NO_HOSTS"
    printf '127.0.0.1\n' >"$VF_DIR/sign-internal-hosts"
    : >"$VF_DIR/keytable"
    : >"$VF_DIR/signingtable"
    for d in "$VF_DOMAIN_SIGNED" "$VF_DOMAIN_WRONGKEY" "$VF_DOMAIN_SPFFAIL"; do
        printf '%s %s:%s:%s\n' "$d" "$d" "$VF_SELECTOR" "$VF_KEYS/$d.key" >>"$VF_DIR/keytable"
        printf '*@%s %s\n' "$d" "$d" >>"$VF_DIR/signingtable"
    done

    cat >"$VF_LIBUNBOUND_CONF" <<EOF
# Generated by teststack.sh - OpenDKIM's resolver (libunbound): everything is
# forwarded to the stack's Unbound, nothing is resolved from the root.
server:
    do-not-query-localhost: no
    do-ip6: no
    module-config: "iterator"
    # Unbound answers "test." itself (NXDOMAIN, RFC 6761) unless told not to
    local-zone: "test." nodefault
forward-zone:
    name: "."
    forward-addr: $HOST@$PORT_DNS
EOF
    printf 'nameserver %s\noptions attempts:2 timeout:2\n' "$VF_DNS_ADDR" >"$VF_RESOLV_CONF"

    cat >"$VF_SIGN_CONF" <<EOF
# Generated by teststack.sh - OpenDKIM, signing instance: signs the mail of
# submission_signed ($HOST:$PORT_SUBMISSION_SIGNED) with selector $VF_SELECTOR.
# No syslog on a test box: runs in the foreground, errors to $VF_SIGN_LOG.
Mode                    s
Socket                  inet:$PORT_MILTER_SIGN@$HOST
Syslog                  no
KeyTable                $VF_DIR/keytable
SigningTable            refile:$VF_DIR/signingtable
InternalHosts           $VF_DIR/sign-internal-hosts
# The keys are 0600 in a 0700 directory, but under /tmp, which OpenDKIM's
# path check calls unsafe (world-writable).
RequireSafeKeys         false
Canonicalization        relaxed/relaxed
SignatureAlgorithm      rsa-sha256
OversignHeaders         From
SoftwareHeader          no
EOF
    cat >"$VF_VERIFY_CONF" <<EOF
# Generated by teststack.sh - OpenDKIM, verifying instance of inbound_verified
# ($HOST:$PORT_INBOUND_VERIFIED).  InternalHosts does not include loopback, so
# mail from $HOST is verified, not skipped.  Keys are looked up through the
# stack's Unbound ($VF_LIBUNBOUND_CONF).
Mode                    v
Socket                  inet:$PORT_MILTER_VERIFY@$HOST
Syslog                  no
AuthservID              $VF_AUTHSERV_ID
InternalHosts           $VF_NO_HOSTS
ResolverConfiguration   $VF_LIBUNBOUND_CONF
DNSTimeout              5
AlwaysAddARHeader       yes
SoftwareHeader          no
EOF
    cat >"$VF_DMARC_CONF" <<EOF
# Generated by teststack.sh - OpenDMARC of inbound_verified
# ($HOST:$PORT_INBOUND_VERIFIED).  Uses the SPF and DKIM results of the
# Authentication-Results fields of $VF_AUTHSERV_ID (policyd-spf's, OpenDKIM's).
# No SPFSelfValidate: OpenDMARC 1.4 takes only an spf=pass from those fields
# and checks SPF itself for every other result, with libspf2, which passes
# every client on loopback ("localhost is always allowed"), so spf=fail would
# count as an aligned SPF pass.  Runs in a private mount namespace whose
# /etc/resolv.conf is $VF_RESOLV_CONF (its _dmarc lookups).
Socket                  inet:$PORT_MILTER_DMARC@$HOST
Syslog                  false
AuthservID              $VF_AUTHSERV_ID
TrustedAuthservIDs      $VF_AUTHSERV_ID
IgnoreHosts             $VF_NO_HOSTS
IgnoreAuthenticatedClients false
RejectFailures          false
SPFSelfValidate         false
FailureReports          false
SoftwareHeader          false
RequiredHeaders         false
EOF

    cat >"$VF_SPF_CONF" <<EOF
# Generated by teststack.sh - policyd-spf of inbound_verified: never rejects,
# prepends "Authentication-Results: $VF_AUTHSERV_ID; spf=...", checks
# loopback clients too (skip_addresses has no 127.0.0.0/8).
debugLevel = 1
HELO_reject = False
Mail_From_reject = False
PermError_reject = False
TempError_Defer = False
skip_addresses = 192.0.2.255/32
Header_Type = AR
Authserv_Id = $VF_AUTHSERV_ID
Hide_Receiver = Yes
EOF
    cat >"$VF_SPF_WRAPPER" <<EOF
# Generated by teststack.sh - run by Postfix's spawn (master.cf "policyd-spf")
# with Debian's /usr/bin/python3: Debian's policyd-spf, with the stack's
# Unbound ($HOST:$PORT_DNS) as its only nameserver and its syslog lines
# appended to $VF_SPF_LOG.
import os, runpy, sys, syslog, time

NAMESERVER, PORT, LOG = "$HOST", $PORT_DNS, "$VF_SPF_LOG"


def _log(*args):
    try:
        with open(LOG, "a") as fh:
            fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} policyd-spf[{os.getpid()}]: {args[-1]}\\n")
    except OSError:
        pass


syslog.openlog = lambda *args, **kwargs: None
syslog.syslog = _log
import spf  # noqa: E402  (after the syslog patch)

if spf.DNSLookup is spf.DNSLookup_pydns:
    spf.DNS.defaults["server"] = [NAMESERVER]
    spf.DNS.defaults["port"] = PORT
else:  # dnspython
    resolver = spf.dns.resolver.Resolver(configure=False)
    resolver.nameservers = [NAMESERVER]
    resolver.port = PORT
    spf.dns.resolver.default_resolver = resolver
sys.argv[0] = "/usr/bin/policyd-spf"
runpy.run_path("/usr/bin/policyd-spf", run_name="__main__")
EOF
    spf_user=policyd-spf
    getent passwd "$spf_user" >/dev/null || spf_user=nobody
    printf '%s\n' "$spf_user" >"$VF_DIR/policyd-spf.user"
    : >"$VF_SPF_LOG"
    chown "$spf_user" "$VF_SPF_LOG"
    chmod 0644 "$VF_DIR"/*.conf "$VF_SPF_WRAPPER" "$VF_SPF_LOG" "$VF_NO_HOSTS" \
        "$VF_DIR/keytable" "$VF_DIR/signingtable" "$VF_DIR/sign-internal-hosts"
    for f in "$VF_SIGN_CONF" "$VF_VERIFY_CONF"; do
        opendkim -n -x "$f" >"$VF_DIR/check.log" 2>&1 || { tail_log "$VF_DIR/check.log"; die "opendkim -n rejected $f"; }
    done
    opendmarc -n -c "$VF_DMARC_CONF" >"$VF_DIR/check.log" 2>&1 || {
        tail_log "$VF_DIR/check.log"
        die "opendmarc -n rejected $VF_DMARC_CONF"
    }
}

gen_unbound() {
    local zones="$UB_DIR/zones.conf" d
    {
        printf '# Generated by teststack.sh - local zones\n'
        printf 'local-zone: "test." static\n'
        printf 'local-data: "test. 300 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 60"\n'
        # example.test: MX 10 mx1 (real Postfix on 127.0.0.1:2525), MX 20 mx2 (dead, 127.0.0.2)
        printf 'local-data: "example.test. 300 IN MX 10 mx1.example.test."\n'
        printf 'local-data: "example.test. 300 IN MX 20 mx2.example.test."\n'
        printf 'local-data: "mx1.example.test. 300 IN A 127.0.0.1"\n'
        printf 'local-data: "mx2.example.test. 300 IN A 127.0.0.2"\n'
        printf 'local-data: "imap.example.test. 300 IN A 127.0.0.1"\n'
        for d in good.test badspf.test baddmarc.test notlsrpt.test; do
            printf 'local-data: "%s. 300 IN MX 10 mx1.example.test."\n' "$d"
            printf "local-data: '%s. 300 IN TXT \"v=spf1 ip4:127.0.0.1 -all\"'\n" "$d"
            if [[ $d == badspf.test ]]; then
                printf "local-data: '%s. 300 IN TXT \"v=spf1 ip4:127.0.0.2 ~all\"'\n" "$d"
            fi
            if [[ $d == baddmarc.test ]]; then
                printf "local-data: '_dmarc.%s. 300 IN TXT \"v=DMARC1; rua=mailto:x@%s\"'\n" "$d" "$d"
            else
                printf "local-data: '_dmarc.%s. 300 IN TXT \"v=DMARC1; p=reject; rua=mailto:dmarc@%s\"'\n" "$d" "$d"
            fi
            printf "local-data: '_mta-sts.%s. 300 IN TXT \"v=STSv1; id=20260101T000000;\"'\n" "$d"
            if [[ $d != notlsrpt.test ]]; then
                printf "local-data: '_smtp._tls.%s. 300 IN TXT \"v=TLSRPTv1; rua=mailto:tlsrpt@%s\"'\n" "$d" "$d"
            fi
            printf "local-data: 'mail._domainkey.%s. 300 IN TXT \"v=DKIM1; k=rsa; p=MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC+r9FShU66RtbcPlIkGqn5tHrxrtbxct7bNv6NZp/kAUN1LVqXapg1CezeUoL6VlCNUri8Rhwd1pm+zr07yai2A7l83iH153bwhK5QpwCBHg2wSyzTQqYSDd3Yjlm5r6kyAjFquYKqHZllbGhlsENqgTZmR+PKovczYbE1RJ9HGQIDAQAB\"'\n" "$d"
        done
        printf 'local-data: "nomx.test. 300 IN A 127.0.0.1"\n'
        # DNSBL: 127.0.0.2 listed, 127.0.0.3 answers with an error code, 127.0.0.1 not listed
        printf 'local-data: "2.0.0.127.dnsbl.test. 300 IN A 127.0.0.2"\n'
        printf "local-data: '2.0.0.127.dnsbl.test. 300 IN TXT \"listed for test\"'\n"
        printf 'local-data: "3.0.0.127.dnsbl.test. 300 IN A 127.255.255.254"\n'
        # sts.test: MTA-STS.  Tests serve the policy themselves over HTTPS on
        # 127.0.0.1 (a port of their own) with the "mtasts" certificate.
        printf 'local-data: "sts.test. 300 IN MX 10 mx1.example.test."\n'
        printf "local-data: '_mta-sts.sts.test. 300 IN TXT \"v=STSv1; id=20261207T000000;\"'\n"
        printf 'local-data: "mta-sts.sts.test. 300 IN A 127.0.0.1"\n'
        # The DNSSEC-signed zones (gen_dnssec) are auth-zones, not local data.
        # Unbound answers from local zones before it resolves (and validates),
        # and the most specific local zone wins: without these lines the
        # static "test." zone answers NXDOMAIN for every name in them.  A
        # "transparent" local zone with no local-data of its own passes every
        # query on to the iterator, which takes it from the auth-zone
        # (for-upstream), and to the validator.
        for d in "${DNSSEC_ZONES[@]}"; do
            printf 'local-zone: "%s." transparent\n' "$d"
        done
    } >"$zones"

    # DNSSEC: only when gen_dnssec has signed the zones (tests/test_teststack_offset.py
    # runs gen_unbound without certificates, hence without signed zones; Unbound
    # refuses a config whose zone or trust anchor file is missing).
    local dnssec_anchors="" dnssec_zones=""
    if [[ -f $DNSSEC_DIR/${DNSSEC_ZONES[0]}.signed ]]; then
        dnssec_zones=$'\n# The signed zones, served to the iterator only (for-upstream: yes,'
        dnssec_zones+=$'\n# for-downstream: no), so that answers pass through the validator; never'
        dnssec_zones+=$'\n# fetched from anywhere (no primary, fallback-enabled: no).'
        for d in "${DNSSEC_ZONES[@]}"; do
            dnssec_anchors+=$(printf '\n    trust-anchor-file: "%s"' "$DNSSEC_DIR/$d.anchor")
            dnssec_zones+=$(printf '\nauth-zone:\n    name: "%s."\n    zonefile: "%s"' "$d" "$DNSSEC_DIR/$d.signed")
            dnssec_zones+=$'\n    for-downstream: no\n    for-upstream: yes\n    fallback-enabled: no'
        done
    fi

    # The verifiers (gen_verifiers): their test domains' data, and port 53 of
    # VF_DNS_ADDR for OpenDMARC, which can only use the libc resolver.
    local vf_interface="" vf_include=""
    if [[ -f $VF_UNBOUND_DATA ]]; then
        vf_interface=$(printf '\n    interface: %s@53' "$VF_DNS_ADDR")
        vf_include=$(printf '\n    include: "%s"' "$VF_UNBOUND_DATA")
    fi

    cat >"$UB_CONF" <<EOF
# Generated by teststack.sh - private Unbound instance, local data and
# local signed zones only.
server:
    verbosity: 1
    interface: $HOST${vf_interface}
    port: $PORT_DNS
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    chroot: ""
    username: ""
    directory: "$UB_DIR"
    pidfile: "$UB_PID"
    logfile: "$UB_LOG"
    use-syslog: no
    log-time-ascii: yes
    do-daemonize: yes
    num-threads: 1
    # The validator checks the signed zones against their trust anchors
    # (answers get AD, a broken signature gives SERVFAIL, CD skips the
    # check).  Local data (the static zones) is never validated: no AD.
    module-config: "validator iterator"
    val-log-level: 2
    trust-anchor-signaling: no${dnssec_anchors}
    # Never recurse: anything outside the local zones is refused, and the
    # outgoing interface is loopback anyway.
    outgoing-interface: $HOST
    local-zone: "." refuse
    include: "$zones"${vf_include}
remote-control:
    control-enable: no${dnssec_zones}
EOF
    unbound-checkconf "$UB_CONF" >"$UB_DIR/checkconf.log" 2>&1 || {
        tail_log "$UB_DIR/checkconf.log"
        die "unbound-checkconf rejected $UB_CONF"
    }
}

gen_prometheus() {
    cat >"$PROM_CONF" <<EOF
# Generated by teststack.sh.  Tests drop file_sd target files into
# $PROM_TARGETS and rule files into $PROM_RULES, then POST /-/reload.
global:
  scrape_interval: 5s
  scrape_timeout: 4s
  evaluation_interval: 5s
rule_files:
  - "$PROM_RULES/*.yml"
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["$HOST:$PORT_ALERTMANAGER"]
scrape_configs:
  - job_name: mail
    file_sd_configs:
      - files: ["$PROM_TARGETS/*.json"]
        refresh_interval: 5s
EOF
    if command -v promtool >/dev/null 2>&1; then
        promtool check config "$PROM_CONF" >"$PROM_DIR/check.log" 2>&1 || {
            tail_log "$PROM_DIR/check.log"
            die "promtool rejected $PROM_CONF"
        }
    fi
}

gen_alertmanager() {
    local url_json
    url_json=$(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$WEBHOOK_URL")
    cat >"$AM_CONF" <<EOF
# Generated by teststack.sh.  Tests may rewrite this file and POST /-/reload.
route:
  receiver: default
  group_by: ["alertname"]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: default
    webhook_configs:
      - url: $url_json
        send_resolved: true
EOF
    if command -v amtool >/dev/null 2>&1; then
        amtool check-config "$AM_CONF" >"$AM_DIR/check.log" 2>&1 || {
            tail_log "$AM_DIR/check.log"
            die "amtool rejected $AM_CONF"
        }
    fi
}

# The stack's PostgreSQL settings (no cluster yet: init_postgresql makes it
# and includes this file from the data dir's postgresql.conf).
gen_postgresql() {
    mkdir -p "$PG_DIR"
    cat >"$PG_CONF" <<EOF
# Generated by teststack.sh - settings of the stack's private PostgreSQL
# cluster ($PG_DATA),
# included at the end of $PG_DATA/postgresql.conf.
cluster_name = '$PG_CLUSTER_NAME'
listen_addresses = '$HOST'
port = $PORT_POSTGRESQL
unix_socket_directories = '$PG_RUN'
max_connections = 50
shared_buffers = 32MB
password_encryption = 'scram-sha-256'
# Real durability: the exporter's durability tests depend on fsync.
fsync = on
synchronous_commit = on
full_page_writes = on
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    chmod 0644 "$PG_CONF"
}

# Create the cluster: initdb as the system user postgres, include $PG_CONF,
# then the role and database in single-user mode (no socket, no password
# prompt).  Needs gen_postgresql and gen_postgresql_password first.
# Runs in the background during "up" (see cmd_up): no output on stdout.
init_postgresql() {
    local bin locale=C pw sock started=$SECONDS
    getent passwd "$PG_OS_USER" >/dev/null ||
        die "no system user $PG_OS_USER (Debian package postgresql): run $SCRIPT_PATH install"
    bin=$(pg_newest_bin_dir) || die "no PostgreSQL server in /usr/lib/postgresql/*/bin: run $SCRIPT_PATH install"
    sock="$PG_RUN/.s.PGSQL.$PORT_POSTGRESQL"
    ((${#sock} <= 107)) || die "PostgreSQL's socket path $sock is longer than 107 bytes: use a shorter MCE_STACK_DIR"
    pw=$(<"$PG_PASSWORD")
    [[ $pw =~ ^[0-9a-f]+$ ]] || die "bad password in $PG_PASSWORD"
    locale -a 2>/dev/null | grep -qixE 'c\.utf-?8' && locale=C.UTF-8
    mkdir -p "$PG_DATA" "$PG_RUN"
    chown "$PG_OS_USER:$PG_OS_USER" "$PG_DATA" "$PG_RUN"
    chmod 0700 "$PG_DATA"
    chmod 0755 "$PG_RUN"
    : >"$PG_LOG"
    chown "$PG_OS_USER:$PG_OS_USER" "$PG_LOG"
    chmod 0644 "$PG_LOG"
    (umask 077 && : >"$PG_INIT_LOG")
    as_postgres test -w "$PG_DATA" ||
        die "the user $PG_OS_USER cannot write to $PG_DATA (is a parent of $STACK_DIR closed to other users?)"
    as_postgres "$bin/initdb" -D "$PG_DATA" --username="$PG_OS_USER" \
        --auth-host=scram-sha-256 --auth-local=peer --encoding=UTF8 --locale="$locale" \
        --no-instructions </dev/null >>"$PG_INIT_LOG" 2>&1 || {
        tail_log "$PG_INIT_LOG"
        die "initdb of $PG_DATA failed"
    }
    printf "\n# teststack.sh: the stack's settings\ninclude '%s'\n" "$PG_CONF" >>"$PG_DATA/postgresql.conf"
    # exit_on_error: a failing statement ends the backend with exit code 1.
    printf '%s\n' \
        "CREATE ROLE $PG_ROLE LOGIN CREATEDB PASSWORD '$pw';" \
        "CREATE DATABASE $PG_DATABASE OWNER $PG_ROLE;" |
        as_postgres "$bin/postgres" --single -D "$PG_DATA" -c exit_on_error=on postgres >>"$PG_INIT_LOG" 2>&1 || {
        tail_log "$PG_INIT_LOG"
        die "creating the role $PG_ROLE and database $PG_DATABASE failed"
    }
    log "postgresql cluster created in $((SECONDS - started))s ($bin, locale $locale)"
}

write_stack_json() {
    local tmp="$STACK_JSON.tmp"
    local ports
    ports=$(printf '"smtp": %d, "smtp_expired": %d, "smtp_selfsigned": %d, "smtp_wronghost": %d, ' \
        "$PORT_SMTP" "$PORT_SMTP_EXPIRED" "$PORT_SMTP_SELFSIGNED" "$PORT_SMTP_WRONGHOST"
        printf '"submission": %d, "smtps": %d, "imap": %d, "imaps": %d, "lmtp": %d, ' \
            "$PORT_SUBMISSION" "$PORT_SMTPS" "$PORT_IMAP" "$PORT_IMAPS" "$PORT_LMTP"
        printf '"dovecot_auth": %d, "dns": %d, "prometheus": %d, "alertmanager": %d, "dead_relay": %d, ' \
            "$PORT_AUTH" "$PORT_DNS" "$PORT_PROMETHEUS" "$PORT_ALERTMANAGER" "$PORT_DEAD_RELAY"
        printf '"postgresql": %d' "$PORT_POSTGRESQL"
        if verifiers_generated; then
            printf ', "submission_signed": %d, "inbound_verified": %d' "$PORT_SUBMISSION_SIGNED" "$PORT_INBOUND_VERIFIED"
        fi)
    local verifiers=""
    if verifiers_generated; then
        verifiers=$(printf '{"milter_sign": %d, "milter_verify": %d, "milter_dmarc": %d, ' \
            "$PORT_MILTER_SIGN" "$PORT_MILTER_VERIFY" "$PORT_MILTER_DMARC"
            printf '"dir": "%s", "authserv_id": "%s", "selector": "%s", "dns_addr": "%s", ' \
                "$VF_DIR" "$VF_AUTHSERV_ID" "$VF_SELECTOR" "$VF_DNS_ADDR"
            printf '"signed": "%s", "wrongkey": "%s", "spffail": "%s"}' \
                "$VF_DOMAIN_SIGNED" "$VF_DOMAIN_WRONGKEY" "$VF_DOMAIN_SPFFAIL")
    fi
    [[ -r $PG_PASSWORD ]] || die "no PostgreSQL password file $PG_PASSWORD"
    STACK_DIR="$STACK_DIR" SCRIPT_PATH="$SCRIPT_PATH" WEBHOOK_URL="$WEBHOOK_URL" \
        DC_USERS="$DC_USERS" CERT_DIR="$CERT_DIR" UB_DIR="$UB_DIR" PORTS="{$ports}" \
        DNSSEC_DIR="$DNSSEC_DIR" DNSSEC_ZONES="${DNSSEC_ZONES[*]}" \
        PG_PASSWORD="$PG_PASSWORD" PG_BIN="$(pg_bin_dir 2>/dev/null || true)" \
        PG_ROLE="$PG_ROLE" PG_DATABASE="$PG_DATABASE" \
        OAUTH_DIR="$OAUTH_DIR" OAUTH_KEY="$OAUTH_KEY" OAUTH_PUB="$OAUTH_PUB" OAUTH_KID_FILE="$OAUTH_KID_FILE" \
        OAUTH_KEYS="$OAUTH_KEYS" OAUTH_ALG="$OAUTH_ALG" OAUTH_ISSUER="$OAUTH_ISSUER" OAUTH_USER="$OAUTH_USER" \
        OAUTH_USERNAME_ATTRIBUTE="$OAUTH_USERNAME_ATTRIBUTE" DC_OAUTH2_CONF="$DC_OAUTH2_CONF" \
        VERIFIERS="$verifiers" \
        python3 - "$tmp" <<'PY'
import json, os, sys
from urllib.parse import quote
d = os.environ["STACK_DIR"]
host = "127.0.0.1"
ports = json.loads(os.environ["PORTS"])
users = {}
with open(os.environ["DC_USERS"]) as fh:
    for line in fh:
        user, pw = line.split(":")[:2]
        users[user] = pw.replace("{PLAIN}", "", 1)
with open(os.path.join(os.environ["CERT_DIR"], "certs.json")) as fh:
    certs = json.load(fh)
dnssec_dir = os.environ["DNSSEC_DIR"]
dnssec_zones = os.environ["DNSSEC_ZONES"].split()
logs = {
    "postfix": f"{d}/postfix/maillog",
    "dovecot": f"{d}/dovecot/dovecot.log",
    "unbound": f"{d}/unbound/unbound.log",
    "prometheus": f"{d}/prometheus/prometheus.log",
    "alertmanager": f"{d}/alertmanager/alertmanager.log",
    "postgresql": f"{d}/postgresql/postgresql.log",
}
with open(os.environ["PG_PASSWORD"]) as fh:
    pg_password = fh.read().strip()
pg_role, pg_db = os.environ["PG_ROLE"], os.environ["PG_DATABASE"]
pg_port = ports["postgresql"]
data = {
    "version": 1,
    "stack_dir": d,
    "script": os.environ["SCRIPT_PATH"],
    "host": host,
    "hostname": "mx1.example.test",
    "local_domains": ["example.test", "archive.example.test"],
    "users": users,
    "ports": ports,
    "dead_relay": {"host": host, "port": ports["dead_relay"]},
    "dead_mx": {"hostname": "mx2.example.test", "host": "127.0.0.2", "port": ports["smtp"]},
    "certs": certs,
    "postfix": {
        "config_dir": f"{d}/postfix/etc",
        "queue_dir": f"{d}/postfix/spool",
        "data_dir": f"{d}/postfix/data",
        "log": logs["postfix"],
    },
    "dovecot": {
        "config": f"{d}/dovecot/dovecot.conf",
        "base_dir": f"{d}/dovecot/run",
        "log": logs["dovecot"],
        "users_file": os.environ["DC_USERS"],
        "mail_dir": f"{d}/mail",
        "home_dir": f"{d}/home",
        "sieve_before": f"{d}/dovecot/sieve/before.sieve",
    },
    "mail_dir": f"{d}/mail",
    "unbound": {
        "config": f"{d}/unbound/unbound.conf",
        "log": logs["unbound"],
        "pid_file": f"{d}/unbound/unbound.pid",
        "host": host,
        "port": ports["dns"],
        "zones": ["example.test", "good.test", "badspf.test", "baddmarc.test",
                  "notlsrpt.test", "nomx.test", "dnsbl.test", "sts.test"],
    },
    "dnssec": {
        "zones": dnssec_zones,
        "tlsa_port": ports["smtp_selfsigned"],
        "trust_anchors": [f"{dnssec_dir}/{z}.anchor" for z in dnssec_zones],
        "signed_dir": dnssec_dir,
    },
    "mta_sts": {"domain": "sts.test", "policy_host": "mta-sts.sts.test", "cert": "mtasts"},
    "prometheus": {
        "url": f"http://{host}:{ports['prometheus']}",
        "config": f"{d}/prometheus/prometheus.yml",
        "rules_dir": f"{d}/prometheus/rules",
        "targets_dir": f"{d}/prometheus/targets",
        "data_dir": f"{d}/prometheus/data",
        "log": logs["prometheus"],
    },
    "alertmanager": {
        "url": f"http://{host}:{ports['alertmanager']}",
        "config": f"{d}/alertmanager/alertmanager.yml",
        "data_dir": f"{d}/alertmanager/data",
        "log": logs["alertmanager"],
        "webhook_url": os.environ["WEBHOOK_URL"],
    },
    "postgresql": {
        "host": host,
        "port": pg_port,
        "user": pg_role,
        "password": pg_password,
        "database": pg_db,
        "dsn": f"postgresql://{quote(pg_role, safe='')}:{quote(pg_password, safe='')}@{host}:{pg_port}/{quote(pg_db, safe='')}",
        "data_dir": f"{d}/postgresql/data",
        "socket_dir": f"{d}/postgresql/run",
        "config": f"{d}/postgresql/postgresql.conf",
        "log": logs["postgresql"],
        "bin_dir": os.environ["PG_BIN"],
    },
    "logs": logs,
}
# OAuth2 (gen_oauth2): only once the key pair exists
if os.path.exists(os.environ["OAUTH_KID_FILE"]):
    with open(os.environ["OAUTH_KID_FILE"]) as fh:
        kid = fh.read().strip()
    alg, keys = os.environ["OAUTH_ALG"], os.environ["OAUTH_KEYS"]
    data["oauth2"] = {
        "private_key": os.environ["OAUTH_KEY"],
        "public_key": os.environ["OAUTH_PUB"],
        "kid": kid,
        "alg": alg,
        "issuer": os.environ["OAUTH_ISSUER"],
        "audience": None,
        "username_attribute": os.environ["OAUTH_USERNAME_ATTRIBUTE"],
        "user": os.environ["OAUTH_USER"],
        "mechanisms": ["XOAUTH2", "OAUTHBEARER"],
        "key_dict": f"fs:posix:prefix={keys}/",
        "key_file": f"{keys}/default/{alg}/{kid}",
        "dovecot_config": os.environ["DC_OAUTH2_CONF"],
        "cert": "idp",
    }
# The mail authentication verifiers (gen_verifiers): only when they are configured
if os.environ["VERIFIERS"]:
    v = json.loads(os.environ["VERIFIERS"])
    vdir, signed, wrongkey, spffail = v["dir"], v["signed"], v["wrongkey"], v["spffail"]
    data["verifiers"] = {
        "authserv_id": v["authserv_id"],
        "submission_signed": {"host": host, "port": ports["submission_signed"]},
        "inbound": {"host": host, "port": ports["inbound_verified"], "hostname": v["authserv_id"]},
        "selector": v["selector"],
        "domains": {"signed": signed, "wrongkey": wrongkey, "spffail": spffail},
        # the verdicts of a message From: and MAIL FROM: someone@DOMAIN sent via submission_signed
        "expected": {
            signed: {"spf": "pass", "dkim": "pass", "dmarc": "pass"},
            wrongkey: {"spf": "neutral", "dkim": "fail", "dmarc": "fail"},
            spffail: {"spf": "fail", "dkim": "pass", "dmarc": "pass"},
        },
        # the keys the signer uses; wrongkey's DNS publishes wrongkey.test-published.key instead
        "keys": {d: f"{vdir}/keys/{d}.key" for d in (signed, wrongkey, spffail)},
        "published_keys": {
            signed: f"{vdir}/keys/{signed}.key",
            wrongkey: f"{vdir}/keys/{wrongkey}-published.key",
            spffail: f"{vdir}/keys/{spffail}.key",
        },
        "milters": {
            "opendkim_sign": {"host": host, "port": v["milter_sign"]},
            "opendkim_verify": {"host": host, "port": v["milter_verify"]},
            "opendmarc": {"host": host, "port": v["milter_dmarc"]},
        },
        "resolver": {"host": v["dns_addr"], "port": 53},
        "dir": vdir,
        "config": {
            "opendkim_sign": f"{vdir}/opendkim-sign.conf",
            "opendkim_verify": f"{vdir}/opendkim-verify.conf",
            "opendmarc": f"{vdir}/opendmarc.conf",
            "policyd_spf": f"{vdir}/policyd-spf.conf",
            "unbound_data": f"{vdir}/unbound-local.conf",
        },
        "logs": {
            "opendkim_sign": f"{vdir}/opendkim-sign.log",
            "opendkim_verify": f"{vdir}/opendkim-verify.log",
            "opendmarc": f"{vdir}/opendmarc.log",
            "policyd_spf": f"{vdir}/policyd-spf.log",
        },
    }
with open(sys.argv[1], "w") as fh:
    json.dump(data, fh, indent=2, sort_keys=True)
    fh.write("\n")
PY
    chmod 0644 "$tmp"
    mv -f "$tmp" "$STACK_JSON"
}

# ----------------------------------------------------------------------------
# start / stop per service

start_postfix() {
    if ! postfix_running; then
        log "starting postfix"
        postfix -c "$PF_ETC" start </dev/null >>"$PF_START_LOG" 2>&1 9>&- || {
            tail_log "$PF_START_LOG" "$PF_LOG"
            die "postfix -c $PF_ETC start failed"
        }
    fi
    wait_until "postfix ports" "$PF_START_LOG $PF_LOG" postfix_ports_up
}

stop_postfix() {
    if postfix_running; then
        log "stopping postfix"
        postfix -c "$PF_ETC" stop </dev/null >>"$PF_START_LOG" 2>&1 9>&- || true
    fi
    wait_until "postfix to stop" "$PF_START_LOG $PF_LOG" tcp_closed "$PORT_SMTP"
}

start_dovecot() {
    local started=
    if ! dovecot_running; then
        log "starting dovecot"
        dovecot -c "$DC_CONF" </dev/null >>"$DC_START_LOG" 2>&1 9>&- || {
            tail_log "$DC_START_LOG" "$DC_LOG"
            die "dovecot -c $DC_CONF failed to start"
        }
        started=1
    fi
    wait_until "dovecot ports" "$DC_START_LOG $DC_LOG" dovecot_ports_up
    if lmtp_enabled; then
        wait_until "dovecot lmtp port" "$DC_START_LOG $DC_LOG" tcp_listening "$PORT_LMTP"
    fi
    if [[ -n $started ]]; then
        postfix_refresh_sasl
        postfix_retry_deferred
    fi
}

# Reload Dovecot after protocols.conf changed.
reload_dovecot() {
    doveadm -c "$DC_CONF" reload </dev/null >>"$DC_START_LOG" 2>&1 9>&- || {
        tail_log "$DC_START_LOG" "$DC_LOG"
        die "doveadm -c $DC_CONF reload failed"
    }
}

stop_dovecot() {
    local pid
    if pid=$(our_pid "$DC_RUN/master.pid"); then
        log "stopping dovecot (pid $pid)"
        doveadm -c "$DC_CONF" stop </dev/null >>"$DC_START_LOG" 2>&1 9>&- || kill -TERM "$pid" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        if kill -0 "$pid" 2>/dev/null; then
            log "dovecot did not exit, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait_until "dovecot to stop" "$DC_LOG" tcp_closed "$PORT_IMAP"
}

start_lmtp() {
    printf 'protocols = imap lmtp\n' >"$DC_PROTOCOLS"
    if dovecot_running; then
        if ! tcp_listening "$PORT_LMTP"; then
            log "enabling dovecot lmtp"
            reload_dovecot
            wait_until "dovecot lmtp port" "$DC_START_LOG $DC_LOG" tcp_listening "$PORT_LMTP"
            postfix_refresh_sasl
        fi
    else
        start_dovecot
    fi
    postfix_retry_deferred
}

stop_lmtp() {
    printf 'protocols = imap\n' >"$DC_PROTOCOLS"
    if dovecot_running && tcp_listening "$PORT_LMTP"; then
        log "disabling dovecot lmtp"
        reload_dovecot
        wait_until "dovecot lmtp port to close" "$DC_LOG" tcp_closed "$PORT_LMTP"
        postfix_refresh_sasl
    fi
    wait_until "dovecot lmtp port to close" "$DC_LOG" tcp_closed "$PORT_LMTP"
}

start_unbound() {
    if ! our_pid "$UB_PID" >/dev/null; then
        log "starting unbound"
        rm -f "$UB_PID"
        unbound -c "$UB_CONF" </dev/null >>"$UB_START_LOG" 2>&1 9>&- || {
            tail_log "$UB_START_LOG" "$UB_LOG"
            die "unbound failed to start"
        }
    fi
    wait_until "unbound on $HOST:$PORT_DNS" "$UB_START_LOG $UB_LOG" unbound_up
}

stop_unbound() { kill_pidfile "$UB_PID" unbound; }

# spawn_daemon PIDFILE LOGFILE COMMAND... : start a non-forking daemon in its
# own session, detached from our stdio, and record its pid.
spawn_daemon() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "$pidfile"
    # shellcheck disable=SC2016  # $$ must expand in the inner shell
    setsid bash -c 'echo $$ >"$0"; exec "$@"' "$pidfile" "$@" </dev/null >>"$logfile" 2>&1 9>&- &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s $pidfile ]] && return 0
        sleep 0.1
    done
    die "could not start $1"
}

start_prometheus() {
    if ! our_pid "$PROM_PID" >/dev/null; then
        log "starting prometheus"
        spawn_daemon "$PROM_PID" "$PROM_LOG" prometheus \
            --config.file="$PROM_CONF" \
            --storage.tsdb.path="$PROM_DATA" \
            --storage.tsdb.retention.time=2h \
            --web.listen-address="$HOST:$PORT_PROMETHEUS" \
            --web.enable-lifecycle
    fi
    wait_until "prometheus /-/ready" "$PROM_LOG" prometheus_up
}

stop_prometheus() { kill_pidfile "$PROM_PID" prometheus; }

start_alertmanager() {
    if ! our_pid "$AM_PID" >/dev/null; then
        log "starting alertmanager"
        spawn_daemon "$AM_PID" "$AM_LOG" prometheus-alertmanager \
            --config.file="$AM_CONF" \
            --storage.path="$AM_DATA" \
            --web.listen-address="$HOST:$PORT_ALERTMANAGER" \
            --cluster.listen-address=
    fi
    wait_until "alertmanager /-/ready" "$AM_LOG" alertmanager_up
}

stop_alertmanager() { kill_pidfile "$AM_PID" alertmanager; }

start_postgresql() {
    local bin
    if ! postgresql_running; then
        [[ -f $PG_DATA/PG_VERSION ]] ||
            die "no PostgreSQL cluster in $PG_DATA (run: $SCRIPT_PATH down; $SCRIPT_PATH up)"
        bin=$(pg_bin_dir) || die "no PostgreSQL server in /usr/lib/postgresql/*/bin: run $SCRIPT_PATH install"
        if [[ ! -e $PG_LOG ]]; then
            : >"$PG_LOG"
            chown "$PG_OS_USER:$PG_OS_USER" "$PG_LOG"
        fi
        if postgresql_leftovers; then
            log "waiting for the processes of the previous postgresql to exit"
            wait_until "the previous postgresql's processes to exit" "$PG_LOG" postgresql_gone
        fi
        log "starting postgresql"
        # pg_ctl runs the postmaster in a session of its own, stdin /dev/null,
        # stdout and stderr into $PG_LOG.
        as_postgres "$bin/pg_ctl" start -D "$PG_DATA" -l "$PG_LOG" -w -t "$WAIT_TIMEOUT" \
            </dev/null >>"$PG_START_LOG" 2>&1 || {
            tail_log "$PG_START_LOG" "$PG_LOG"
            die "pg_ctl start -D $PG_DATA failed"
        }
    fi
    wait_until "postgresql on $HOST:$PORT_POSTGRESQL" "$PG_START_LOG $PG_LOG" postgresql_up
}

stop_postgresql() {
    local bin pid
    if pid=$(postgresql_pid); then
        bin=$(pg_bin_dir) || die "no PostgreSQL server in /usr/lib/postgresql/*/bin"
        log "stopping postgresql (pid $pid)"
        as_postgres "$bin/pg_ctl" stop -D "$PG_DATA" -m fast -w -t "$WAIT_TIMEOUT" \
            </dev/null >>"$PG_START_LOG" 2>&1 || {
            log "postgresql did not stop (fast shutdown), stopping it with -m immediate"
            as_postgres "$bin/pg_ctl" stop -D "$PG_DATA" -m immediate -w -t "$WAIT_TIMEOUT" \
                </dev/null >>"$PG_START_LOG" 2>&1 || true
        }
    fi
    wait_until "postgresql to stop" "$PG_START_LOG $PG_LOG" tcp_closed "$PORT_POSTGRESQL"
}

# The milters run in the foreground (-f) under spawn_daemon (pid files in
# $VF_DIR; stderr, where they report configuration and startup errors, to
# their *.log there: no syslog).  OpenDMARC only has the libc resolver, so it
# runs in a private mount namespace in which $VF_RESOLV_CONF (nameserver
# VF_DNS_ADDR, where the stack's Unbound also answers on port 53) is
# bind-mounted over /etc/resolv.conf; the real one is never touched.
start_verifiers() {
    verifiers_generated || die "no verifiers in $VF_DIR (a stack made before them: run $SCRIPT_PATH up)"
    if ! our_pid "$VF_SIGN_PID" >/dev/null; then
        log "starting opendkim (signing)"
        spawn_daemon "$VF_SIGN_PID" "$VF_SIGN_LOG" opendkim -f -x "$VF_SIGN_CONF"
    fi
    if ! our_pid "$VF_VERIFY_PID" >/dev/null; then
        log "starting opendkim (verifying)"
        spawn_daemon "$VF_VERIFY_PID" "$VF_VERIFY_LOG" opendkim -f -x "$VF_VERIFY_CONF"
    fi
    if ! our_pid "$VF_DMARC_PID" >/dev/null; then
        log "starting opendmarc"
        # shellcheck disable=SC2016  # $1 and $@ expand in the inner shell
        spawn_daemon "$VF_DMARC_PID" "$VF_DMARC_LOG" unshare --mount --propagation private \
            sh -c 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"' sh "$VF_RESOLV_CONF" \
            opendmarc -f -c "$VF_DMARC_CONF"
    fi
    wait_until "the verifiers' milters" "$VF_SIGN_LOG $VF_VERIFY_LOG $VF_DMARC_LOG" verifiers_up
}

stop_verifiers() {
    kill_pidfile "$VF_DMARC_PID" opendmarc
    kill_pidfile "$VF_VERIFY_PID" "opendkim (verifying)"
    kill_pidfile "$VF_SIGN_PID" "opendkim (signing)"
}

start_all() {
    start_unbound
    start_dovecot
    start_lmtp
    start_verifiers
    start_postfix
    start_postgresql
    start_alertmanager
    start_prometheus
}

stop_all() {
    stop_postgresql
    stop_prometheus
    stop_alertmanager
    stop_postfix
    stop_verifiers
    stop_dovecot
    stop_unbound
}

# ----------------------------------------------------------------------------
# commands

# The webhook URL in stack.json: the one the running Alertmanager was
# configured with (kept when "up" rewrites stack.json of a running stack).
stack_json_webhook_url() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["alertmanager"]["webhook_url"])' \
        "$STACK_JSON" || die "cannot read $STACK_JSON"
}

cmd_up() {
    need_root
    require_binaries
    if [[ -f $STACK_JSON && -f $STACK_DIR/$MARKER_NAME ]] && ! stack_has_verifiers && any_running; then
        # A stack made by a teststack.sh without the verifiers: start afresh
        # (the DNS data, Postfix's services and stack.json all change).
        log "the stack has no mail authentication verifiers yet: recreating it (down, then a fresh up)"
        stop_all
        rm -f "$STACK_JSON"
    fi
    if [[ -f $STACK_JSON ]] && all_up; then
        if stack_has_oauth2; then
            log "stack already up ($STACK_DIR)"
            echo "up: already-up"
            return 0
        fi
        # A stack made by a teststack.sh without OAuth2: add it (Dovecot is
        # reloaded, Postfix's smtpd processes replaced; nothing else restarts).
        WEBHOOK_URL=$(stack_json_webhook_url)
        add_oauth2
        write_stack_json
        log "stack up ($STACK_JSON)"
        echo "up: repaired"
        return 0
    fi
    if [[ -f $STACK_JSON && -f $STACK_DIR/$MARKER_NAME ]] && any_running; then
        log "stack partially up, starting the missing services"
        local add_pg="" add_oauth=""
        if ! stack_has_oauth2; then
            add_oauth2
            add_oauth=1
        fi
        if [[ ! -f $PG_DATA/PG_VERSION ]] && ! postgresql_running; then
            # A stack made by a teststack.sh without PostgreSQL: add it.
            log "the stack has no postgresql cluster yet, creating it"
            rm -rf --one-file-system "$PG_DIR"
            gen_postgresql_password
            gen_postgresql
            init_postgresql
            add_pg=1
        fi
        start_all
        if [[ -n $add_pg || -n $add_oauth ]]; then
            WEBHOOK_URL=$(stack_json_webhook_url)
            write_stack_json
        fi
        log "stack up ($STACK_JSON)"
        echo "up: repaired"
        return 0
    fi
    if [[ -d $STACK_DIR ]] && any_running; then
        log "stopping leftovers of an incomplete stack"
        stop_all
    fi
    log "generating stack in $STACK_DIR"
    ensure_vmail_user
    prepare_stack_dir
    gen_passwords
    gen_postgresql
    # initdb takes a second or two: let it run while the rest is generated.
    local pg_init_pid
    init_postgresql 9>&- &
    pg_init_pid=$!
    gen_certs
    gen_oauth2
    gen_dnssec
    gen_verifiers
    gen_postfix
    gen_dovecot
    gen_unbound
    gen_prometheus
    gen_alertmanager
    wait "$pg_init_pid" || die "creating the postgresql cluster failed (see above and $PG_INIT_LOG)"
    start_all
    write_stack_json
    log "stack up ($STACK_JSON)"
    echo "up: created"
}

cmd_down() {
    need_root
    if [[ ! -d $STACK_DIR ]]; then
        log "no stack dir $STACK_DIR, nothing to do"
        return 0
    fi
    stop_all
    rm -f "$STACK_JSON"
    log "stack down"
}

cmd_status() {
    local s rc=0 state
    for s in "${SERVICES[@]}"; do
        if service_up "$s"; then
            state=up
        else
            state=down
            rc=1
        fi
        printf '%-13s %s\n' "$s" "$state"
    done
    if [[ ! -f $STACK_JSON ]]; then
        printf '%-13s %s\n' stack.json missing
        rc=1
    elif ! stack_has_oauth2 || ! stack_has_verifiers; then
        # made by a teststack.sh without OAuth2 or the verifiers; "up" adds them
        printf '%-13s %s\n' stack.json outdated
        rc=1
    fi
    return "$rc"
}

valid_service() {
    local s
    for s in "${SERVICES[@]}"; do
        [[ $s == "$1" ]] && return 0
    done
    die "unknown service '$1' (expected one of: ${SERVICES[*]})"
}

main() {
    [[ $# -ge 1 ]] || usage
    check_stack_dir
    case "$1" in
        install) cmd_install ;;
        up)
            need_root
            take_lock
            cmd_up
            ;;
        down)
            need_root
            take_lock
            cmd_down
            ;;
        status) cmd_status ;;
        restart-postfix)
            need_root
            take_lock
            stop_postfix
            start_postfix
            ;;
        stop | start)
            [[ $# -eq 2 ]] || usage
            need_root
            valid_service "$2"
            take_lock
            [[ -f $STACK_DIR/$MARKER_NAME ]] || die "no stack in $STACK_DIR (run: $SCRIPT_PATH up)"
            "${1}_${2}"
            ;;
        -h | --help | help) usage ;;
        *) usage ;;
    esac
}

main "$@"
