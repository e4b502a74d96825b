"""The browser harness itself: what goes wrong in the page reaches the test, and a browser
that hangs is killed with everything it started.

Both matter to every browser test: their assertions ("every request answered 2xx", "no
console error") are only as good as the events the driver reports.
"""

from __future__ import annotations

from pathlib import Path

import psutil

from tests.browser_fixtures import Toolchain, run_browser, serve_directory

pytest_plugins = ["tests.browser_plugin"]

PAGE = """<!doctype html><html><head><link rel="icon" href="data:,"></head><body><script>
window.done = (async () => {
  const results = {};
  for (const [name, url, headers] of [
    ["simple", "%(other)s/data.json", {}],
    ["preflighted", "%(other)s/data.json", {Accept: 'multipart/related; type="a/b"'}],
    ["missing", "%(self)s/missing.json", {}],
  ]) {
    try { results[name] = (await fetch(url, {headers})).status; }
    catch (error) { results[name] = String(error); }
  }
  console.error("something the page reports");
  return results;
})();
</script></body></html>"""


def test_failures_in_the_page_reach_the_test(browser_toolchain: Toolchain, tmp_path: Path) -> None:
    """A cross-origin server without CORS: the browser refuses the answers, the driver says
    so per request (preflight included), and console errors come back."""
    site, other = tmp_path / "site", tmp_path / "other"
    site.mkdir()
    other.mkdir()
    (other / "data.json").write_text("{}")
    with serve_directory(site) as page, serve_directory(other) as no_cors:
        (site / "index.html").write_text(PAGE % {"other": no_cors, "self": page})
        run = browser_toolchain.run(
            f"{page}/index.html", [{"evaluate": "window.done"}], timeout=30,
            user_data_dir=tmp_path / "profile",
        )
    run.raise_for_error()
    results = run.step_value(0)
    assert results["simple"].startswith("TypeError")
    assert results["preflighted"].startswith("TypeError")
    assert results["missing"] == 404
    to_other = run.to(no_cors)
    simple = [x for x in to_other if x.method == "GET"]
    assert simple and all(not x.ok and "corsError" in (x.error or "") for x in simple), to_other
    preflights = [x for x in to_other if x.is_preflight]
    assert preflights and all(not x.ok for x in preflights), to_other
    assert [x.status for x in run.to(page) if x.url.endswith("missing.json")] == [404]
    assert "console.error: something the page reports" in run.console_errors


def test_a_hung_browser_is_killed_with_everything_it_started(
    browser_toolchain: Toolchain, tmp_path: Path
) -> None:
    profile = tmp_path / "hung-profile"
    run = run_browser(
        browser_toolchain, "data:text/html,<p>waiting</p>",
        [{"waitFor": "false", "timeoutMs": 600_000}], timeout=2, grace=3, user_data_dir=profile,
    )
    assert run.error is not None
    left = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if str(profile) in cmdline:
            left.append(cmdline[:200])
    assert not left, left
