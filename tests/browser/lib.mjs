// What the drivers share: launching Debian's Chromium through playwright-core
// with a clear message when either is missing, bounded waits, and the JSON
// lines tests/browser.rs reads from stdout.
import { existsSync } from 'node:fs';

export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';

/** Prints one JSON line for the Rust test. */
export function say(value) {
  process.stdout.write(JSON.stringify(value) + '\n');
}

/** Fails the driver: a JSON line saying why, exit status 1. */
export function fail(message) {
  say({ error: message });
  process.exit(1);
}

/** The driver's configuration: JSON in the first argument. */
export function args() {
  try {
    return JSON.parse(process.argv[2]);
  } catch (error) {
    fail('expected a JSON argument: ' + error.message);
  }
}

/** Headless Chromium, or a failure that says how to install what is missing. */
export async function launch() {
  let chromium;
  try {
    ({ chromium } = await import('playwright-core'));
  } catch (error) {
    fail('playwright-core is not installed: run `npm ci` in tests/browser (' + error.message + ')');
  }
  if (!existsSync(CHROMIUM)) {
    fail(`no Chromium at ${CHROMIUM}: install it with \`apt-get install chromium\` (or set CHROMIUM)`);
  }
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
    timeout: 20000,
  });
}

/** Runs `main` with a browser, failing the driver after `ms` in all. */
export async function run(ms, main) {
  const timer = setTimeout(() => fail(`the driver did not finish within ${ms} ms`), ms);
  let browser;
  try {
    browser = await launch();
    await main(browser);
  } catch (error) {
    fail(String(error && error.stack ? error.stack : error));
  } finally {
    clearTimeout(timer);
    if (browser) await browser.close().catch(() => {});
  }
}

/**
 * Installs, in the page, EventSources on `streams` ([{url, names}]) that
 * record into `window.recorded[i]`: every event of the listed names (and
 * unnamed ones) with its type, lastEventId and data; opens, errors, the
 * readyState after each error, and the gateway's close events.
 */
export async function openEventSources(page, streams) {
  await page.evaluate((streams) => {
    window.recorded = streams.map(({ url, names }) => {
      const log = { events: [], opens: 0, errors: 0, states: [], closes: [] };
      const source = new EventSource(url);
      log.source = source;
      const keep = (e) => log.events.push({ type: e.type, id: e.lastEventId, data: e.data });
      for (const name of names) source.addEventListener(name, keep);
      source.onmessage = keep;
      source.onopen = () => { log.opens += 1; };
      source.onerror = () => { log.errors += 1; log.states.push(source.readyState); };
      source.addEventListener('gateway.close', (e) => log.closes.push(JSON.parse(e.data)));
      return log;
    });
  }, streams);
}

/** What the page recorded, without the EventSource objects. */
export async function recorded(page) {
  return page.evaluate(() =>
    window.recorded.map(({ source, ...log }) => ({ ...log, readyState: source.readyState })),
  );
}
