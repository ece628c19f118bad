/** Headless Chromium helpers shared by the browser test and benchmarks/js_runtime.mjs. */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

import { PYTHON, REPO, pythonEnv } from './helpers.mjs';

/** puppeteer-core, resolved from js/node_modules. */
export async function loadPuppeteer() {
  return (await import('puppeteer-core')).default;
}

export const CHROMIUM = process.env.CHROMIUM || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Start fit-web on a free port; resolves to {url, stop()}. */
export async function startFitWeb() {
  const server = spawn(PYTHON, ['-m', 'cli.web', '--port', '0', '-q'], { cwd: REPO, env: pythonEnv, stdio: ['ignore', 'pipe', 'inherit'] });
  const line = await new Promise((resolve, reject) => {
    createInterface({ input: server.stdout }).once('line', resolve);
    server.once('exit', (code) => reject(new Error(`fit-web exited with ${code}`)));
  });
  return { url: JSON.parse(line).url, stop: () => server.kill() };
}

/** Launch Chromium with a fresh profile; resolves to {browser, close()}. */
export async function launchChromium(puppeteer) {
  const profile = mkdtempSync(join(tmpdir(), 'fit-chromium-'));
  const browser = await puppeteer.launch({ executablePath: CHROMIUM, headless: true,
    args: [...CHROMIUM_ARGS, `--user-data-dir=${profile}`] });
  return { browser, close: async () => { await browser.close(); rmSync(profile, { recursive: true, force: true }); } };
}

/** Fill the form, click Generate and wait; returns {state, status}. */
export async function generateInPage(page, settings) {
  for (const [id, value] of Object.entries(settings)) {
    await page.$eval(`#${id}`, (el, v) => { el.value = v; }, String(value));
  }
  await page.evaluate(() => { document.body.dataset.state = 'waiting'; });
  await page.click('#generate');
  await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), { timeout: 120000 });
  return page.evaluate(() => ({ state: document.body.dataset.state, status: document.getElementById('status').textContent }));
}

/** RGB pixels of the page's canvas. */
export async function canvasPixels(page) {
  const rgba = await page.evaluate(() => {
    const canvas = document.getElementById('image');
    return Array.from(canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data);
  });
  return Uint8Array.from(rgba.filter((_, i) => i % 4 !== 3));
}
