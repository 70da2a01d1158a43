#!/usr/bin/env python3
"""Drives the bundled web client in headless Chromium (Debian's chromium and
chromium-driver, Selenium from PyPI, SE_OFFLINE so nothing is downloaded).

Run by tests/browser.rs, which starts the daemon and plays the 10bit (TLS)
side. The two talk over this script's stdin and stdout, one word a line:

  script -> test: SENT <text>      the page sent <text> to the topic
  test -> script: REPLIED <text>   a TLS client sent <text>; wait until the page shows it
  script -> test: SEEN
  test -> script: RESTARTED        the server restarted; wait for the page to log in again
  script -> test: SENT <text>      ...sent after the reconnect
  test -> script: DONE
  script -> test: OK

Usage: chat.py URL USER PASSWORD TOPIC SCREENSHOT_DIR
On any failure it saves SCREENSHOT_DIR/failure.png and the page's HTML and
exits non-zero; on success it saves SCREENSHOT_DIR/chat.png.
"""

import os
import shutil
import sys
import traceback

os.environ.setdefault("SE_OFFLINE", "true")

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:
    print(f"MISSING selenium ({e}): pip install selenium", file=sys.stderr)
    sys.exit(3)

WAIT_S = 30


def find_binary(*names):
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return None


def say(line):
    print(line, flush=True)


def hear(expected):
    line = sys.stdin.readline()
    if not line:
        raise RuntimeError(f"the test went away while waiting for {expected}")
    word, _, rest = line.rstrip("\n").partition(" ")
    if word != expected:
        raise RuntimeError(f"expected {expected} from the test, got {line!r}")
    return rest


def main():
    url, user, password, topic, shots = sys.argv[1:6]
    chromium = find_binary("chromium", "chromium-browser", "google-chrome")
    driver_bin = find_binary("chromedriver")
    if not chromium or not driver_bin:
        print("MISSING chromium or chromedriver: apt-get install chromium chromium-driver",
              file=sys.stderr)
        sys.exit(3)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--window-size=1100,700",
                # The test daemon's certificate is self-signed, for localhost only.
                "--ignore-certificate-errors",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--no-default-browser-check", "--disable-domain-reliability",
                "--disable-client-side-phishing-detection",
                # Nothing but the test daemon on 127.0.0.1 is ever reached.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=driver_bin), options=options)
    os.makedirs(shots, exist_ok=True)
    for old in ("chat.png", "failure.png", "failure.html"):
        if os.path.exists(os.path.join(shots, old)):
            os.remove(os.path.join(shots, old))
    try:
        run(driver, url, user, password, topic)
        driver.save_screenshot(os.path.join(shots, "chat.png"))
    except BaseException:
        traceback.print_exc()
        shot = os.path.join(shots, "failure.png")
        driver.save_screenshot(shot)
        with open(os.path.join(shots, "failure.html"), "w", encoding="utf-8") as f:
            f.write(driver.page_source)
        print(f"screenshot of the failure: {shot}", file=sys.stderr)
        for entry in driver.get_log("browser") if hasattr(driver, "get_log") else []:
            print(f"browser console: {entry}", file=sys.stderr)
        sys.exit(1)
    finally:
        driver.quit()


def run(driver, url, user, password, topic):
    wait = WebDriverWait(driver, WAIT_S)
    driver.get(url)
    # A wrong password: the error is shown as text, with its code.
    wait.until(EC.visibility_of_element_located((By.ID, "username"))).send_keys(user)
    driver.find_element(By.ID, "password").send_keys("not-the-password" + Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "error"), "(auth/failed)"))
    # Log in through the form, with the keyboard.
    box = driver.find_element(By.ID, "password")
    box.clear()
    box.send_keys(password + Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "status"), f"Logged in as {user}"))
    wait.until(EC.invisibility_of_element_located((By.ID, "error")))

    # Create a topic of our own: it opens, with us as its member.
    driver.find_element(By.ID, "create-name").send_keys("garden" + Keys.ENTER)
    wait.until(EC.text_to_be_present_in_element((By.ID, "topic-title"), "#garden"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "topics"), "#garden"))

    # Find the topic and join it.
    driver.find_element(By.ID, "find-name").send_keys(topic + Keys.ENTER)
    join = wait.until(EC.element_to_be_clickable(
        (By.XPATH, f"//ul[@id='found']//button[contains(., '#{topic}')]")))
    join.click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "topic-title"), f"#{topic}"))
    wait.until(EC.text_to_be_present_in_element((By.ID, "members"), user))
    # History: the newest page first, then scrolling back.
    wait.until(EC.text_to_be_present_in_element((By.ID, "messages"), "old 54"))
    wait.until(EC.element_to_be_clickable((By.ID, "earlier"))).click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "messages"), "old 0"))

    text = "hello from chromium"
    send(driver, wait, text)
    say(f"SENT {text}")

    reply = hear("REPLIED")
    wait.until(EC.text_to_be_present_in_element((By.ID, "messages"), reply))
    say("SEEN")

    sessions = driver.find_element(By.TAG_NAME, "body").get_attribute("data-sessions")
    hear("RESTARTED")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body")
               .get_attribute("data-sessions") != sessions)
    # After the reconnect the open topic is read again from history.
    wait.until(EC.text_to_be_present_in_element((By.ID, "messages"), reply))
    text = "hello again after the restart"
    send(driver, wait, text)
    say(f"SENT {text}")
    hear("DONE")
    say("OK")


def send(driver, wait, text):
    box = wait.until(EC.element_to_be_clickable((By.ID, "message")))
    box.send_keys(text + Keys.ENTER)
    # The page shows its own message once the server acknowledged it.
    wait.until(lambda d: d.find_element(By.ID, "message").get_attribute("value") == "")
    wait.until(EC.text_to_be_present_in_element((By.ID, "messages"), text))


if __name__ == "__main__":
    main()
