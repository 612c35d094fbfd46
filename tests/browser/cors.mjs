// Case b: pages of other origins open EventSources on the gateway.
// Input: {pages: [{page, streams: [{url, names, expect}]}], timeout_ms}.
// Each stream is settled when `expect` events arrived, or when it failed
// for good (readyState CLOSED). Prints {"result": [[log, …], …]}, a log
// per stream per page.
import { args, openEventSources, recorded, run, say } from './lib.mjs';

const config = args();
await run(config.timeout_ms, async (browser) => {
  const result = [];
  for (const { page: url, streams } of config.pages) {
    const page = await browser.newPage();
    await page.goto(url);
    await openEventSources(page, streams);
    await page.waitForFunction(
      (expect) => window.recorded.every((log, i) =>
        log.events.length >= expect[i] || log.source.readyState === EventSource.CLOSED),
      streams.map((s) => s.expect),
      { timeout: 10000 },
    );
    result.push(await recorded(page));
    await page.evaluate(() => window.recorded.forEach((log) => log.source.close()));
    await page.close();
  }
  say({ result });
});
