// Drives Debian's Chromium through playwright-core for the Python tests, and reports what the
// browser itself saw as JSON lines on stdout (one object per line, field "event" first):
//
//   {"event": "launched", "version": ...}
//   {"event": "network", "method": "Network.requestWillBeSent", "params": {...}}   (CDP, trimmed)
//   {"event": "console", "type": "error", "text": ..., "location": ...}
//   {"event": "pageerror", "message": ...}
//   {"event": "step", "index": n, "value": ...}          (what an "evaluate" step returned)
//   {"event": "error", "stage": "launch" | "run", "message": ...}
//   {"event": "done"}
//
// The job is one JSON object on stdin: {executable, userDataDir, url, timeoutMs, viewport,
// steps: [...]}. Steps (each may carry "timeoutMs", and "when": "<js expression>" to run
// only if the page says so): {"waitFor": "<js expression>"},
// {"evaluate": "<js>"}, {"click": {"selector" | "text", "optional"?}}, {"wheel": {"selector",
// "deltaY", "times", "pauseMs"}}, {"press": {"selector"?, "key", "times", "pauseMs"}},
// {"fill": {"selector", "value"}} (types into a form field once it is there),
// {"screenshot": {"path", "selector"?}}, {"sleep": ms}, {"networkIdle": {}}.
//
// Network events come from the DevTools protocol rather than Playwright's request events
// because only the protocol reports CORS preflights (type "Preflight").
import { chromium } from 'playwright-core';

const FLAGS = [
  '--headless=new',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

function emit(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

async function readJob() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

function trimHeaders(headers) {
  // Header names as the browser spelled them; values kept whole (Accept is what we check).
  return headers ?? {};
}

function trimNetwork(method, params) {
  switch (method) {
    case 'Network.requestWillBeSent':
      return {
        requestId: params.requestId,
        url: params.request.url,
        method: params.request.method,
        headers: trimHeaders(params.request.headers),
        type: params.type,
        timestamp: params.timestamp,
        redirectResponse: params.redirectResponse
          ? {
              status: params.redirectResponse.status,
              url: params.redirectResponse.url,
              headers: trimHeaders(params.redirectResponse.headers),
            }
          : undefined,
      };
    case 'Network.requestWillBeSentExtraInfo':
      return { requestId: params.requestId, headers: trimHeaders(params.headers) };
    case 'Network.responseReceived':
      return {
        requestId: params.requestId,
        type: params.type,
        timestamp: params.timestamp,
        url: params.response.url,
        status: params.response.status,
        headers: trimHeaders(params.response.headers),
        fromDiskCache: params.response.fromDiskCache,
        timing: params.response.timing,
      };
    case 'Network.loadingFinished':
      return {
        requestId: params.requestId,
        timestamp: params.timestamp,
        encodedDataLength: params.encodedDataLength,
      };
    case 'Network.loadingFailed':
      return {
        requestId: params.requestId,
        timestamp: params.timestamp,
        type: params.type,
        errorText: params.errorText,
        canceled: params.canceled,
        blockedReason: params.blockedReason,
        corsErrorStatus: params.corsErrorStatus,
      };
    default:
      return params;
  }
}

const NETWORK_EVENTS = [
  'Network.requestWillBeSent',
  'Network.requestWillBeSentExtraInfo',
  'Network.responseReceived',
  'Network.loadingFinished',
  'Network.loadingFailed',
];

async function runStep(page, step, index, defaultTimeout) {
  const timeout = step.timeoutMs ?? defaultTimeout;
  if (step.when !== undefined && !(await page.evaluate(step.when))) {
    emit('step', { index, skipped: true });
    return;
  }
  if (step.waitFor !== undefined) {
    await page.waitForFunction(step.waitFor, undefined, { timeout, polling: 100 });
  } else if (step.evaluate !== undefined) {
    emit('step', { index, value: await page.evaluate(step.evaluate) });
  } else if (step.wheel !== undefined) {
    const { selector, deltaY = 100, times = 1, pauseMs = 200 } = step.wheel;
    await page.hover(selector, { timeout });
    for (let i = 0; i < times; i++) {
      await page.mouse.wheel(0, deltaY);
      await page.waitForTimeout(pauseMs);
    }
  } else if (step.press !== undefined) {
    const { selector, key, times = 1, pauseMs = 200 } = step.press;
    if (selector) await page.click(selector, { timeout });
    for (let i = 0; i < times; i++) {
      await page.keyboard.press(key);
      await page.waitForTimeout(pauseMs);
    }
  } else if (step.click !== undefined) {
    const { selector, text, optional = false } = step.click;
    const target = (selector ? page.locator(selector) : page.getByText(text, { exact: true })).first();
    try {
      await target.click({ timeout });
    } catch (error) {
      if (!optional) throw error;
    }
  } else if (step.fill !== undefined) {
    const { selector, value } = step.fill;
    await page.locator(selector).first().fill(value, { timeout });
  } else if (step.screenshot !== undefined) {
    const { path, selector } = step.screenshot;
    const target = selector ? page.locator(selector).first() : page;
    await target.screenshot({ path, timeout });
  } else if (step.sleep !== undefined) {
    await page.waitForTimeout(step.sleep);
  } else if (step.networkIdle !== undefined) {
    await page.waitForLoadState('networkidle', { timeout });
  } else {
    throw new Error(`unknown step ${JSON.stringify(step)}`);
  }
}

async function main() {
  const job = await readJob();
  const timeout = job.timeoutMs ?? 60000;
  let context;
  try {
    context = await chromium.launchPersistentContext(job.userDataDir, {
      executablePath: job.executable,
      headless: true,
      args: [...FLAGS, ...(job.extraArgs ?? [])],
      viewport: job.viewport ?? { width: 1280, height: 800 },
      timeout,
    });
  } catch (error) {
    emit('error', { stage: 'launch', message: String(error?.message ?? error) });
    process.exitCode = 2;
    return;
  }
  try {
    if (job.initScript) await context.addInitScript({ content: job.initScript });
    const page = context.pages()[0] ?? (await context.newPage());
    const cdp = await context.newCDPSession(page);
    emit('launched', { version: (await cdp.send('Browser.getVersion')).product });
    for (const method of NETWORK_EVENTS) {
      cdp.on(method, (params) => emit('network', { method, params: trimNetwork(method, params) }));
    }
    await cdp.send('Network.enable');
    page.on('console', (message) =>
      emit('console', { type: message.type(), text: message.text(), location: message.location() }),
    );
    page.on('pageerror', (error) => emit('pageerror', { message: String(error?.stack ?? error) }));
    page.setDefaultTimeout(timeout);
    await page.goto(job.url, { timeout, waitUntil: 'load' });
    for (const [index, step] of (job.steps ?? []).entries()) {
      await runStep(page, step, index, timeout);
    }
    emit('done');
  } catch (error) {
    emit('error', { stage: 'run', message: String(error?.stack ?? error) });
    process.exitCode = 1;
  } finally {
    await context.close().catch(() => {});
  }
}

await main();
