"""The gateway's admin page in a real browser (Debian's chromium, driven by selenium).

Signs in, finds the example plugins with their figures, opens a plugin's own page and watches a
webhook arrive there, replaces a plugin's file and reloads it with its button, and signs out.
Prints "admin ui checks: N ok"; any failed check raises. Screenshots go to $SCREENSHOTS.
"""

import hashlib
import hmac
import os
import shutil
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL = os.environ["GATEWAY_URL"]
TOKEN = os.environ["ADMIN_TOKEN"]
SECRET = os.environ["WEBHOOK_SECRET"].encode()
EXPECT = os.environ["EXPECT_PLUGINS"].split(",")
SHOTS = os.environ["SCREENSHOTS"]

checks = 0


def check(condition, what):
    global checks
    if not condition:
        raise AssertionError(what)
    checks += 1


def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-extensions", "--disable-quic", "--window-size=1500,900",
        f"--user-data-dir={os.environ['PROFILE_DIR']}",
    ]:
        options.add_argument(arg)
    # An explicit driver: selenium does not look for one (or download one).
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def ready(driver, path, timeout=15):
    """Waits for the page at `path` to have loaded its data (the page marks its body then)."""
    WebDriverWait(driver, timeout).until(lambda d: d.execute_script(
        "return location.pathname === arguments[0] && document.body.dataset.ready === 'true'", path))


def cells(driver, plugin):
    """The texts of plugin's row, read in one step (the page rebuilds its rows as it refreshes)."""
    return driver.execute_script(
        "const row = document.querySelector(`#plugins tr[data-plugin='${arguments[0]}']`);"
        "return row ? Array.from(row.cells, (td) => td.innerText) : [];", plugin)


def click(driver, selector):
    """Clicks the element `selector` finds (found in the same step as the click)."""
    driver.execute_script("document.querySelector(arguments[0]).click()", selector)


def send_webhook(body):
    signature = "sha256=" + hmac.new(SECRET, body.encode(), hashlib.sha256).hexdigest()
    req = urllib.request.Request(
        f"{URL}/plugins/webhook-receiver/hooks/github", data=body.encode(), method="POST",
        headers={"x-signature-256": signature, "content-type": "application/json"})
    with urllib.request.urlopen(req) as resp:
        return resp.status


driver = browser()
try:
    # Sign in: a wrong token is refused, the right one opens the page.
    driver.get(f"{URL}/ui/")
    driver.find_element(By.ID, "token").send_keys("not-the-token")
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    WebDriverWait(driver, 10).until(lambda d: "denied" in d.current_url)
    check(driver.find_element(By.ID, "error").is_displayed(), "a wrong token shows the error")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    driver.find_element(By.CSS_SELECTOR, "#login button").click()
    ready(driver, "/ui/")
    check(driver.find_elements(By.ID, "plugins"), "signed in, the page shows the plugins table")

    # Every example plugin, with its version, file hash, capabilities and hook figures.
    for plugin in EXPECT:
        check(cells(driver, plugin)[1], f"{plugin} has a version")
    stamp = cells(driver, "header-stamp")
    check("µs" in stamp[6] and stamp[7] == "serving", f"header-stamp shows p99 per hook and its state: {stamp}")
    hook = cells(driver, "webhook-receiver")
    check("Routes" in hook[3] and "Ui" in hook[3] and len(hook[2]) == 12, f"webhook-receiver row: {hook}")
    models = driver.execute_script("return Array.from(document.querySelectorAll('#models td'), (td) => td.innerText)")
    check("mock-gpt" in models and "mock" in models, f"models table: {models}")
    driver.save_screenshot(os.path.join(SHOTS, "admin-ui.png"))

    # The plugin's own page, from the sidebar: its counts, then a webhook arriving live (SSE).
    click(driver, '#plugin-pages a[data-plugin="webhook-receiver"]')
    ready(driver, "/ui/plugins/webhook-receiver/index.html")
    check(driver.title.startswith("Webhooks"), driver.title)
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "received").text == "1")
    check(send_webhook('{"from":"the browser test"}') == 202, "webhook accepted")
    WebDriverWait(driver, 10).until(
        lambda d: any("the browser test" in li.text for li in d.find_elements(By.CSS_SELECTOR, "#events li")))
    WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "received").text == "2")
    driver.save_screenshot(os.path.join(SHOTS, "admin-ui-plugin-page.png"))

    # A new build over the plugin's file; its reload button swaps it and the row shows the new
    # version and load time.
    driver.get(f"{URL}/ui/")
    ready(driver, "/ui/")
    before = cells(driver, "swapper")
    check(before[1] == "1.0.0", f"swapper starts at 1.0.0: {before}")
    shutil.copy(os.environ["SWAP_TO"], os.environ["SWAP_FILE"])
    click(driver, '#plugins button[data-plugin="swapper"]')
    WebDriverWait(driver, 15).until(lambda d: cells(d, "swapper")[1] == "2.0.0")
    after = cells(driver, "swapper")
    check(after[9] != before[9] and after[2] != before[2], f"new load time and file: {before} -> {after}")
    status = driver.find_element(By.ID, "status").text
    check("swapper" in status, f"the page says what the reload did: {status}")

    # Signing out ends the session: the admin API refuses the browser again.
    click(driver, "#sidebar form button")
    WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.ID, "token"))
    code = driver.execute_async_script(
        "const done = arguments[0]; fetch('/admin/plugins').then(r => done(r.status));")
    check(code == 401, f"after signing out the admin API answers {code}")
finally:
    driver.quit()

print(f"admin ui checks: {checks} ok")
