"""The chat page at `/` of `hearth serve smollm2`, in a real browser: Debian's Chromium driven
by Selenium through chromedriver (scripts/install_chromium.sh installs both).

Run by scripts/test_server.sh with its servers: HEARTH_URL (plain), HEARTH_URL_LIMITED (API key
HEARTH_KEY, one slot, a queue of one) and HEARTH_URL_THINK (a template that opens <think>, so
the answer comes as reasoning). Saves a screenshot to HEARTH_SCREENSHOT (default
target/chat_page.png) and prints its path. Prints one `test result:` line like the other
server tests.
"""
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from runner import report, run_tests
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["HEARTH_URL"].rstrip("/")
URL_LIMITED = os.environ["HEARTH_URL_LIMITED"].rstrip("/")
URL_THINK = os.environ["HEARTH_URL_THINK"].rstrip("/")
KEY = os.environ["HEARTH_KEY"]
SHOT = os.environ.get("HEARTH_SCREENSHOT", "target/chat_page.png")
SHOT_REASONING = re.sub(r"(\.png)?$", "_reasoning.png", SHOT, count=1)
MODEL = "smollm2"
PROMPT = "Write a Python function that checks whether a number is prime."
MAX_TOKENS = 96

requests_seen = []  # every URL the browser asked for, from Chromium's performance log
console = []  # the browser's console messages


def call(method, url, body=None, headers=None):
    """(status, headers, text) of one request."""
    data = json.dumps(body).encode() if body is not None else None
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, headers=h, method=method)
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def plain_answer(url, messages, max_tokens, headers=None):
    """The non-streamed greedy answer to `messages`: (message, usage)."""
    s, _, t = call("POST", url + "/v1/chat/completions", {
        "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": max_tokens,
    }, headers)
    assert s == 200, (s, t)
    j = json.loads(t)
    return j["choices"][0]["message"], j["usage"]


def start_browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,860", "--no-first-run", "--disable-extensions",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--disable-default-apps", "--force-color-profile=srgb", "--hide-scrollbars"]:
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    service = Service(os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=opts)


driver = None


def browser():
    global driver
    if driver is None:
        driver = start_browser()
    return driver


def drain_logs():
    """Move the browser's logs into requests_seen and console."""
    d = browser()
    for e in d.get_log("performance"):
        m = json.loads(e["message"])["message"]
        if m["method"] == "Network.requestWillBeSent":
            requests_seen.append(m["params"]["request"]["url"])
    for e in d.get_log("browser"):
        console.append(e)


def wait(cond, timeout=120, what="condition"):
    return WebDriverWait(browser(), timeout, poll_frequency=0.05).until(
        lambda d: cond(d), message=f"timed out waiting for {what}")


def js(script, *args):
    return browser().execute_script(script, *args)


def open_page(url):
    d = browser()
    d.get(url + "/")
    wait(lambda d: d.find_element(By.ID, "model").text not in ("", "\u2026"), 30, "the model name")


def set_field(id_, value):
    e = browser().find_element(By.ID, id_)
    e.clear()
    e.send_keys(value)
    e.send_keys(Keys.TAB)  # fires change


def open_settings():
    js("document.getElementById('settings').open = true")


RECORD = """
window.__states = [];
const box = document.getElementById('messages');
const note = () => {
  const ms = box.querySelectorAll('.msg.assistant');
  const last = ms[ms.length - 1];
  if (!last) return;
  const t = last.querySelector('.content').textContent;
  const r = last.querySelector('.reasoning-body').textContent;
  const st = last.dataset.state;
  const p = window.__states[window.__states.length - 1];
  if (!p || p.t !== t || p.st !== st || p.r !== r) window.__states.push({t, r, st});
};
new MutationObserver(note).observe(box, {childList: true, subtree: true, characterData: true, attributes: true});
"""


def send(text):
    """Type `text`, press Enter; returns how many assistant messages there were before."""
    d = browser()
    n = len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant"))
    box = d.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)
    return n


def wait_answer(n_before, timeout=180):
    """The new assistant message once it has finished (done, error or stopped)."""
    def done(d):
        ms = d.find_elements(By.CSS_SELECTOR, ".msg.assistant")
        if len(ms) > n_before and ms[-1].get_attribute("data-state") in ("done", "error", "stopped"):
            return ms[-1]
        return False
    return wait(done, timeout, "the answer")


def stored_chats():
    return json.loads(js("return localStorage.getItem('hearth.chats')") or "[]")


def words(s):
    return re.findall(r"[A-Za-z0-9]+", s)


def markdown_words(raw):
    """The words of `raw` that its rendering shows: without fence info strings, list markers
    and link targets."""
    raw = re.sub(r"(?m)^\s*(```|~~~)\S*\s*$", "", raw)
    raw = re.sub(r"(?m)^\s*(\d+[.)]|[-*+])\s+", "", raw)
    raw = re.sub(r"\]\([^)\s]*\)", "]", raw)
    return words(raw)


def rendered_text(msg_el):
    """The answer's shown text, less the code blocks' headers (language and Copy)."""
    return js("""const c = arguments[0].querySelector('.content').cloneNode(true);
                 c.querySelectorAll('.code-head').forEach((h) => h.remove());
                 return c.textContent;""", msg_el)


STATS = re.compile(r"(\d+) tokens \u00b7 ([\d.]+) tok/s \u00b7 ([\d.]+) s to first token")


# ------------------------------------------------------------------------------------------

def test_a_served_with_headers_and_api_untouched():
    s, h, body = call("GET", URL + "/")
    assert s == 200, s
    assert h["Content-Type"] == "text/html; charset=utf-8", h["Content-Type"]
    csp = h["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/]{43}='", csp)) == 2, csp
    assert h["X-Content-Type-Options"] == "nosniff"
    assert "<title>hearth</title>" in body
    s, h, _ = call("HEAD", URL + "/")
    assert s == 200 and h["Content-Type"].startswith("text/html"), s
    s, _, _ = call("GET", URL + "/?q=1&x=%00")
    assert s == 200, s
    # other methods on / are refused, not served and not crashed
    s, _, t = call("POST", URL + "/", {"x": 1})
    assert s == 405, (s, t)
    # the API is as it was
    s, _, t = call("GET", URL + "/health")
    assert s == 200 and json.loads(t)["status"] == "ok", t
    s, _, t = call("GET", URL + "/v1/models")
    assert s == 200 and json.loads(t)["data"][0]["id"] == MODEL, t
    s, _, t = call("GET", URL + "/index.html")
    assert s == 404 and "error" in json.loads(t), t
    # with --api-key the page loads without the key; the API still wants it
    s, _, _ = call("GET", URL_LIMITED + "/")
    assert s == 200, s
    s, _, t = call("GET", URL_LIMITED + "/v1/models")
    assert s == 401, (s, t)
    s, _, t = call("GET", URL_LIMITED + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert s == 200, (s, t)


def test_b_markdown_is_rendered_safely():
    open_page(URL)
    src = ("# Title\n\nSome **bold**, *it*, ~~gone~~ and `a < b` here.\n\n- one\n- two\n  - nested\n\n"
           "3. three\n4. four\n\n| x | y |\n|:--|--:|\n| 1 | `2` |\n\n"
           "```js\nlet a = 1 < 2 && \"<b>\";\n```\n\n> quoted\n\n"
           "[ok](https://example.com/a) [bad](javascript:alert(1)) ![pic](https://example.com/p.png) "
           "<img src=x onerror=alert(1)> <script>alert(2)</script> snake_case_name\n\n"
           "```\nunterminated fence, as while streaming")
    r = js("""const d = document.createElement('div');
              d.appendChild(window.hearth.renderMarkdown(arguments[0]));
              const q = (s) => [...d.querySelectorAll(s)].map((e) => e.textContent);
              return {h1: q('h1'), strong: q('strong'), em: q('em'), del: q('del'),
                      code: q(':not(pre) > code'), ul: q('ul > li'), nested: q('ul ul > li'),
                      ol: q('ol > li'), olStart: d.querySelector('ol') && d.querySelector('ol').start,
                      th: q('th'), td: q('td'), pre: q('pre > code'), copy: q('.code .copy'),
                      quote: q('blockquote'), hrefs: [...d.querySelectorAll('a')].map((a) => a.href),
                      imgs: d.querySelectorAll('img').length,
                      scripts: d.querySelectorAll('script').length, text: d.textContent};""", src)
    assert r["h1"] == ["Title"], r
    assert r["strong"] == ["bold"] and r["em"] == ["it"] and r["del"] == ["gone"], r
    assert "a < b" in r["code"] and "2" in r["code"], r
    assert r["ul"][0] == "one" and r["ul"][1].startswith("two") and r["nested"] == ["nested"], r
    assert r["ol"] == ["three", "four"] and r["olStart"] == 3, r
    assert r["th"] == ["x", "y"] and r["td"] == ["1", "2"], r
    assert r["pre"] == ['let a = 1 < 2 && "<b>";', "unterminated fence, as while streaming"], r
    assert r["copy"] == ["Copy", "Copy"], r
    assert r["quote"] == ["quoted"], r
    # only http(s) links; the image is a link, not a load
    assert r["hrefs"] == ["https://example.com/a", "https://example.com/p.png"], r
    assert r["imgs"] == 0 and r["scripts"] == 0, r
    assert "<img src=x onerror=alert(1)>" in r["text"] and "<script>alert(2)</script>" in r["text"], r
    assert "snake_case_name" in r["text"], r


def test_c_streams_persists_and_screenshot():
    open_page(URL)
    assert browser().find_element(By.ID, "model").text == MODEL
    open_settings()
    set_field("temperature", "0")
    set_field("max-tokens", str(MAX_TOKENS))
    js(RECORD)
    n = send(PROMPT)
    msg = wait_answer(n)
    assert msg.get_attribute("data-state") == "done", msg.text
    assert browser().find_element(By.CSS_SELECTOR, ".msg.user .content").text == PROMPT
    states = js("return window.__states")
    partial = {s["t"] for s in states if s["st"] == "streaming" and s["t"].strip()}
    assert len(partial) >= 2, f"the answer did not arrive progressively: {states}"
    # the stored answer is the server's greedy answer, word for word
    t0 = time.time()
    want, usage = plain_answer(URL, [{"role": "user", "content": PROMPT}], MAX_TOKENS)
    plain_tps = usage["completion_tokens"] / (time.time() - t0)
    chats = stored_chats()
    assert len(chats) == 1 and chats[0]["title"].startswith("Write a Python function"), chats
    got = chats[0]["messages"][-1]
    assert got["role"] == "assistant" and got["content"] == want["content"], (got, want)
    # and what the page shows is that text, rendered
    shown = rendered_text(msg)
    assert markdown_words(want["content"]) == words(shown), (want["content"], shown)
    # tokens and tokens/s
    stats = msg.find_element(By.CSS_SELECTOR, ".stats").text
    m = STATS.search(stats)
    assert m, stats
    # counted by the server (usage), not estimated by the page
    assert "\u2248" not in stats and int(m.group(1)) == usage["completion_tokens"], (stats, usage)
    # the same order as the speed of the non-streamed request (prefill included) measured here
    tps = float(m.group(2))
    print(f"  page: {stats}; the same request not streamed: {plain_tps:.1f} tok/s", flush=True)
    assert plain_tps / 10 < tps < plain_tps * 10, (tps, plain_tps)
    # code blocks have a copy button that copies
    if "```" in want["content"]:
        b = msg.find_element(By.CSS_SELECTOR, ".code .copy")
        b.click()
        wait(lambda d: b.text == "Copied", 5, "'Copied'")
    # a reload keeps the conversation
    browser().refresh()
    wait(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.assistant"), 30, "the stored chat")
    msg = browser().find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1]
    assert rendered_text(msg) == shown
    assert browser().find_element(By.CSS_SELECTOR, ".msg.user .content").text == PROMPT
    assert STATS.search(msg.find_element(By.CSS_SELECTOR, ".stats").text)
    items = browser().find_elements(By.CSS_SELECTOR, "#chat-list li.active .open")
    assert len(items) == 1 and items[0].text.startswith("Write a Python function"), items
    os.makedirs(os.path.dirname(os.path.abspath(SHOT)), exist_ok=True)
    assert browser().save_screenshot(SHOT)
    with open(SHOT, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_d_server_errors_are_shown():
    open_page(URL)
    browser().find_element(By.ID, "new-chat").click()
    open_settings()
    set_field("temperature", "2.5")  # out of range: the server answers 400
    n = send("Hello")
    msg = wait_answer(n, 60)
    set_field("temperature", "0")
    assert msg.get_attribute("data-state") == "error"
    err = msg.find_element(By.CSS_SELECTOR, ".error").text
    assert "400" in err and "temperature must be in [0, 2]" in err, err
    # this chat is named by its first message; rename it, then delete it
    d = browser()
    assert d.find_element(By.CSS_SELECTOR, "#chat-list li.active .open").text == "Hello"
    n_chats = len(stored_chats())
    d.find_element(By.CSS_SELECTOR, "#chat-list li.active .rename").click()
    prompt = WebDriverWait(d, 5).until(lambda d: d.switch_to.alert)
    prompt.send_keys("Renamed chat")
    prompt.accept()
    wait(lambda d: d.find_element(By.CSS_SELECTOR, "#chat-list li.active .open").text == "Renamed chat",
         5, "the new name")
    assert [c["title"] for c in stored_chats()].count("Renamed chat") == 1
    d.find_element(By.CSS_SELECTOR, "#chat-list li.active .delete").click()
    WebDriverWait(d, 5).until(lambda d: d.switch_to.alert).accept()
    wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "#chat-list li.active"), 5, "the deletion")
    left = stored_chats()
    assert len(left) == n_chats - 1 and "Renamed chat" not in [c["title"] for c in left], left
    assert not d.find_elements(By.CSS_SELECTOR, ".msg"), "the deleted chat is still shown"


def test_e_stop_aborts_the_stream():
    open_page(URL)
    browser().find_element(By.ID, "new-chat").click()
    open_settings()
    set_field("temperature", "0")
    set_field("max-tokens", "400")
    n = send("Write a long story about a dragon who learns to bake bread.")
    wait(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".msg.assistant")) > n and
         d.find_elements(By.CSS_SELECTOR, ".msg.assistant")[-1].find_element(
             By.CSS_SELECTOR, ".content").text.strip(), 120, "the first words")
    assert browser().find_element(By.ID, "stop").is_displayed()
    browser().find_element(By.ID, "stop").click()
    msg = wait_answer(n, 30)
    assert msg.get_attribute("data-state") == "stopped", msg.get_attribute("data-state")
    assert browser().find_element(By.ID, "send").is_displayed()
    stats = msg.find_element(By.CSS_SELECTOR, ".stats").text
    m = re.search(r"\u2248(\d+) tokens", stats)
    assert m and int(m.group(1)) < 400, stats
    set_field("max-tokens", str(MAX_TOKENS))
    # the server freed the sequence and still answers
    def idle():
        s, _, t = call("GET", URL + "/metrics")
        return "hearth_running_sequences 0" in t
    deadline = time.time() + 20
    while not idle():
        assert time.time() < deadline, "the stopped request kept running on the server"
        time.sleep(0.1)


def test_f_reasoning_is_collapsed():
    # this server's template opens <think>, so SmolLM2's answer is all reasoning
    open_page(URL_THINK)
    open_settings()
    set_field("temperature", "0")
    set_field("max-tokens", "24")
    js(RECORD)
    n = send("Why is the sky blue?")
    msg = wait_answer(n)
    assert msg.get_attribute("data-state") == "done"
    want, _ = plain_answer(URL_THINK, [{"role": "user", "content": "Why is the sky blue?"}], 24)
    assert want.get("reasoning_content"), want
    det = msg.find_element(By.CSS_SELECTOR, "details.reasoning")
    assert det.is_displayed() and det.get_attribute("open") is None, "reasoning not collapsed"
    body = js("return arguments[0].querySelector('.reasoning-body').textContent", det)
    assert body == want["reasoning_content"].strip(), (body, want)
    states = js("return window.__states")
    assert len({s["r"] for s in states if s["st"] == "streaming" and s["r"]}) >= 2, states
    det.find_element(By.TAG_NAME, "summary").click()
    assert det.get_attribute("open") is not None
    os.makedirs(os.path.dirname(os.path.abspath(SHOT_REASONING)), exist_ok=True)
    assert browser().save_screenshot(SHOT_REASONING)


def test_g_api_key_and_busy_server():
    open_page(URL_LIMITED)  # another origin: its own storage, no key yet
    d = browser()
    assert d.find_element(By.ID, "model").text == "no model"
    assert "401" in d.find_element(By.ID, "status").text
    n = send("Hi")
    msg = wait_answer(n, 30)
    assert msg.get_attribute("data-state") == "error"
    assert "401" in msg.find_element(By.CSS_SELECTOR, ".error").text
    open_settings()
    set_field("api-key", KEY)
    wait(lambda d: d.find_element(By.ID, "model").text == MODEL, 10, "the model with the key")
    set_field("temperature", "0")
    set_field("max-tokens", "8")
    n = send("Say hello.")
    msg = wait_answer(n)
    assert msg.get_attribute("data-state") == "done" and STATS.search(
        msg.find_element(By.CSS_SELECTOR, ".stats").text), msg.text
    # one slot and a queue of one: with both taken, the page's request gets 429
    host = urllib.parse.urlsplit(URL_LIMITED)
    conns = []
    try:
        for i in range(2):
            c = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
            c.request("POST", "/v1/chat/completions", json.dumps({
                "model": MODEL, "max_tokens": 2000, "temperature": 0, "stream": True,
                # (answers that run to max_tokens at temperature 0: "Count to 5000, one by
                # one." was answered in 34 tokens, so the slot could free before the page's
                # request came, and it was served instead of refused)
                "messages": [{"role": "user", "content": f"Repeat the word hello {i + 3}000 times."}]}),
                {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
            conns.append(c)
        deadline = time.time() + 20
        while True:
            _, _, t = call("GET", URL_LIMITED + "/metrics", headers={"Authorization": f"Bearer {KEY}"})
            if "hearth_running_sequences 1" in t and "hearth_queue_length 1" in t:
                break
            assert time.time() < deadline, t
            time.sleep(0.05)
        n = send("Hi again")
        msg = wait_answer(n, 30)
    finally:
        for c in conns:
            c.close()
    assert msg.get_attribute("data-state") == "error"
    err = msg.find_element(By.CSS_SELECTOR, ".error").text
    assert "429" in err, err


def test_h_no_request_left_the_server():
    drain_logs()
    origins = {URL, URL_LIMITED, URL_THINK}
    outside = [u for u in requests_seen
               if not u.startswith("data:") and not any(u.startswith(o + "/") for o in origins)]
    assert requests_seen, "no requests were logged: the check would see nothing"
    assert not outside, outside
    assert any(u.endswith("/v1/chat/completions") for u in requests_seen), requests_seen
    csp_errors = [e for e in console if "Content Security Policy" in e["message"]]
    assert not csp_errors, csp_errors
    js_errors = [e for e in console if "Uncaught" in e["message"]]
    assert not js_errors, js_errors
    # and the policy is enforced: an outside load from the page is refused
    open_page(URL)
    js("const i = new Image(); i.src = 'http://192.0.2.1/x.png'; document.body.appendChild(i);")
    time.sleep(0.3)
    drain_logs()
    refused = [e for e in console if "Content Security Policy" in e["message"] and "192.0.2.1" in e["message"]]
    assert refused, "the Content-Security-Policy did not refuse an outside image"


if __name__ == "__main__":
    only = set(sys.argv[1:])
    try:
        passed, failed = run_tests(dict(globals()), only)
    finally:
        if driver is not None:
            driver.quit()
    for path in (SHOT, SHOT_REASONING):
        if os.path.exists(path):
            print(f"chat page screenshot: {os.path.abspath(path)}")
    report(passed, failed)
