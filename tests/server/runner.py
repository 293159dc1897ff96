"""The server tests' runner: every `test_*` function of a module, in name order (or the ones
named on the command line), with one `test result:` line in cargo's format at the end so that
scripts/test.sh counts them with the Rust tests."""
import sys
import time
import traceback


def run_tests(namespace, only=None, extra_failures=lambda: 0):
    """Run the tests in `namespace`; return (passed, failed). `extra_failures` is called after
    the tests and its count is added to the failures (a server that died, say)."""
    tests = [(n, f) for n, f in sorted(namespace.items()) if n.startswith("test_") and callable(f)]
    passed = failed = 0
    for name, f in tests:
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            f()
            passed += 1
            print(f"test {name} ... ok ({time.time() - t0:.1f}s)", flush=True)
        except Exception:
            failed += 1
            print(f"test {name} ... FAILED", flush=True)
            traceback.print_exc()
    failed += extra_failures()
    return passed, failed


def report(passed, failed):
    """The closing line, and the exit status."""
    status = "ok" if failed == 0 else "FAILED"
    print(f"\ntest result: {status}. {passed} passed; {failed} failed; 0 ignored; 0 measured; 0 filtered out")
    sys.exit(1 if failed else 0)
