/**
 * The web page in headless Chromium (Debian's chromium driven by puppeteer-core): fit-web serves the page and the
 * default model, the page generates 96x64 and 128x128 (vision-ntk) images, and the canvas pixels must match the
 * Python fit-run for the same seed (>= 50 dB). A bad request shows one message and the page stays usable.
 * FIT_WEB_SCREENSHOT=path saves a screenshot of the page.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';

import { PYTHON, REPO, psnr, pythonEnv, pythonMissing, readPng, runCli } from './helpers.mjs';

export const CHROMIUM = process.env.CHROMIUM || ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find(existsSync);
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

/** Start fit-web on a free port; resolves to {url, stop()}. */
export async function startFitWeb() {
  const server = spawn(PYTHON, ['-m', 'cli.web', '--port', '0', '-q'], { env: pythonEnv, stdio: ['ignore', 'pipe', 'inherit'] });
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

const reason = pythonMissing()
  ?? (CHROMIUM ? null : 'no chromium (apt-get install -y chromium, or set CHROMIUM)')
  ?? (existsSync(join(REPO, 'js', 'node_modules', 'onnxruntime-web')) ? null : 'run npm ci --prefix js first');

describe('web page in headless Chromium', { skip: reason ?? false }, () => {
  let server;
  let chromium;
  let page;
  before(async () => {
    const { default: puppeteer } = await import('puppeteer-core');
    server = await startFitWeb();
    chromium = await launchChromium(puppeteer);
    page = await chromium.browser.newPage();
    await page.goto(server.url);
    await page.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 120000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready');
  });
  after(async () => {
    await chromium?.close();
    server?.stop();
  });

  test('a bad request shows one message and the page stays usable', async () => {
    const result = await generateInPage(page, { steps: 0 });
    assert.deepEqual(result, { state: 'error', status: 'steps must be a positive whole number, got 0' });
    const tooBig = await generateInPage(page, { steps: 2, width: 256, height: 256 });
    assert.equal(tooBig.state, 'error');
    assert.match(tooBig.status, /^256x256 needs 256 tokens, more than this model's maximum of 64/);
  });

  for (const [width, height, extrapolation] of [[96, 64, ''], [128, 128, 'vision-ntk']]) {
    test(`${width}x${height} ${extrapolation || 'package default'} matches fit-run`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'fit-web-'));
      const result = await generateInPage(page, { width, height, class: 7, seed: 5, steps: 8, sampler: 'heun', cfg: 4,
        extrapolation });
      assert.equal(result.state, 'done', result.status);
      const args = ['-W', width, '-H', height, '--class', 7, '--seed', 5, '--steps', 8, '--sampler', 'heun', '--cfg', 4,
        '-q', '-o', join(dir, 'py.png'), ...(extrapolation ? ['--extrapolation', extrapolation] : [])].map(String);
      const py = runCli(PYTHON, ['-m', 'cli.run', ...args]);
      assert.equal(py.status, 0, py.stderr);
      const db = psnr(await canvasPixels(page), readPng(join(dir, 'py.png')).pixels);
      console.log(`# page vs fit-run ${width}x${height}: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
      assert.ok(db >= 50, `${db} dB`);
      if (process.env.FIT_WEB_SCREENSHOT && width === 128) await page.screenshot({ path: process.env.FIT_WEB_SCREENSHOT });
      rmSync(dir, { recursive: true, force: true });
    });
  }
});
