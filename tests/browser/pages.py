"""What the browser tests do on the console's pages: sign in, press keys, wait for what should be there."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.console import ConsoleServer

T = TypeVar("T")
WAIT_S = 10.0


def wait_for(driver: Any, condition: Callable[[Any], T], message: str = "", timeout: float = WAIT_S) -> T:
    """Poll ``condition`` until it returns something truthy (never a fixed sleep)."""
    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(condition, message)


def text_of(driver: Any, css: str) -> str:
    """The rendered text of the first match, read in one step (live updates swap elements at any time)."""
    found = driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css)
    return str(found).strip()


def sign_in(driver: Any, console: ConsoleServer, who: str = "ana", then: str = "/") -> None:
    driver.get(f"{console.url}/sign-in?next={quote(then, safe='')}")
    field = driver.find_element(By.ID, "token")
    field.send_keys(console.tokens[who])
    field.submit()
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".who .name"), "not signed in")


def press(driver: Any, *keys: str) -> None:
    """Keys typed at the page (its focused element: the body unless a field has focus)."""
    ActionChains(driver).send_keys(*keys).perform()


def item_key_shown(driver: Any) -> str:
    return text_of(driver, "#item-key")


def wait_for_item(driver: Any, key: str) -> None:
    wait_for(driver, lambda d: item_key_shown(d) == key, f"item {key} not shown (showing {item_key_shown(driver)!r})")


def open_item(driver: Any, console: ConsoleServer, key: str, query: str = "") -> None:
    driver.get(f"{console.url}/items/{quote(key, safe='')}{'?' + query if query else ''}")
    wait_for_item(driver, key)


def queue_keys(driver: Any) -> list[str]:
    script = "return Array.from(document.querySelectorAll('#queue-items tr[data-key]'), r => r.dataset.key)"
    return list(driver.execute_script(script))


def alert_text(driver: Any) -> str | None:
    """The text of an open alert dialog, or None: a hostile page must never open one."""
    try:
        return str(driver.switch_to.alert.text)
    except NoAlertPresentException:
        return None


def console_problems(driver: Any) -> list[str]:
    """The browser console's errors and warnings since the last call (CSP violations are errors)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
