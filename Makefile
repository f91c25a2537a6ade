# Entry points for people trying the project.  The scripts do the work; see docs/demo.md
# and docs/testing.md.  The demo targets need root (they start Postfix and Dovecot).
.PHONY: demo demo-down demo-status \
	demo-break-postfix demo-fix-postfix demo-break-queue demo-fix-queue demo-break-cert demo-fix-cert \
	test lint

demo:
	scripts/demo.sh up

demo-down:
	scripts/demo.sh down

demo-status:
	scripts/demo.sh status

demo-break-postfix:
	scripts/demo.sh break postfix

demo-fix-postfix:
	scripts/demo.sh fix postfix

demo-break-queue:
	scripts/demo.sh break queue

demo-fix-queue:
	scripts/demo.sh fix queue

demo-break-cert:
	scripts/demo.sh break cert

demo-fix-cert:
	scripts/demo.sh fix cert

# Lint, type-check and the whole test suite (installs what is missing).
test:
	scripts/test.sh

lint:
	ruff check .
	ruff format --check exporter tests benchmarks scripts
	mypy
