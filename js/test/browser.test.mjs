/**
 * The web page in headless Chromium (Debian's chromium driven by puppeteer-core, its GPU disabled, so the page runs
 * on WASM; webgpu.test.mjs runs it on WebGPU): fit-web serves the page and the default model, the page generates
 * 96x64 and 128x128 (vision-ntk) images, and the canvas pixels must match the Python fit-run for the same seed
 * (>= 50 dB), and a unipc image with a time shift the Python runtime's. A bad request shows one message and the page
 * stays usable.
 * FIT_WEB_SCREENSHOT=path saves a screenshot of the page.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { CHROMIUM, canvasPixels, generateInPage, launchChromium, loadPuppeteer, startFitWeb } from './browser-helpers.mjs';
import { PACKAGE, PYTHON, REPO, psnr, pythonMissing, pythonReference, readPng, runCli } from './helpers.mjs';

const reason = pythonMissing()
  ?? (CHROMIUM ? null : 'no chromium (apt-get install -y chromium, or set CHROMIUM)')
  ?? (existsSync(join(REPO, 'js', 'node_modules', 'onnxruntime-web')) ? null : 'run npm ci --prefix js first');

describe('web page in headless Chromium', { skip: reason ?? false }, () => {
  let server;
  let chromium;
  let page;
  before(async () => {
    server = await startFitWeb();
    chromium = await launchChromium(await loadPuppeteer());
    page = await chromium.browser.newPage();
    await page.goto(server.url);
    await page.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 120000 });
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'ready');
  });
  after(async () => {
    await chromium?.close();
    server?.stop();
  });

  test('the form starts at the package defaults', async () => {
    const values = await page.evaluate(() => Object.fromEntries(['width', 'height', 'class', 'steps', 'sampler',
      'time-shift', 'tail-compression', 'cfg', 'extrapolation'].map((id) => [id, document.getElementById(id).value])));
    const { sampler } = JSON.parse(readFileSync(join(PACKAGE, 'manifest.json'), 'utf8'));
    assert.deepEqual(values, { width: '80', height: '80', class: '0', steps: String(sampler.steps),
      sampler: sampler.method, 'time-shift': '', 'tail-compression': '', cfg: '4', extrapolation: '' });
    const samplers = await page.$$eval('#sampler option', (options) => options.map((o) => o.value));
    assert.deepEqual(samplers, ['euler', 'heun', 'dopri5', 'sde', 'ab2', 'unipc']);
  });

  test('a bad request shows one message and the page stays usable', async () => {
    const result = await generateInPage(page, { steps: 0 });
    assert.deepEqual(result, { state: 'error', status: 'steps must be a whole number from 1 to 10,000, got 0' });
    const tooBig = await generateInPage(page, { steps: 2, width: 256, height: 256 });
    assert.equal(tooBig.state, 'error');
    assert.match(tooBig.status, /^256x256 needs 256 tokens, more than this model's maximum of 64/);
    assert.deepEqual(await generateInPage(page, { width: 96, height: 64, 'time-shift': 'abc' }),
      { state: 'error', status: "time_shift must be a number from 0.01 to 100, got 'abc'" });
    assert.deepEqual(await generateInPage(page, { 'time-shift': '0' }),
      { state: 'error', status: 'time_shift must be a number from 0.01 to 100, got 0.0' });
    assert.deepEqual(await generateInPage(page, { sampler: 'sde', 'time-shift': '2' }), { state: 'error',
      status: 'time_shift applies to euler, heun, ab2, unipc, not sde, which keeps its own schedule' });
    assert.deepEqual(await generateInPage(page, { sampler: 'ab2', 'time-shift': '', 'tail-compression': '2' }),
      { state: 'error', status: 'tail_compression must be a number from 0 to 1, got 2.0' });
    assert.deepEqual(await generateInPage(page, { sampler: 'dopri5', 'tail-compression': '0.5' }), { state: 'error',
      status: 'tail_compression applies to euler, heun, ab2, unipc, not dopri5, which keeps its own schedule' });
  });

  test('?precision= picks a transformer variant, ?ep= where it runs; an unknown one is one message', async () => {
    const status = async (query) => {
      const other = await chromium.browser.newPage();
      await other.goto(`${server.url}?${query}`);
      await other.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 60000 });
      const text = await other.$eval('#status', (el) => el.textContent);
      await other.close();
      return text;
    };
    // This browser runs with its GPU disabled: no WebGPU adapter, so WASM, and the status line says why.
    assert.match(await status('precision=int8'),
      /^Model loaded in [\d.]+ s \(transformer int8, \d WASM threads?; not on WebGPU: no WebGPU adapter\)\.$/);
    assert.match(await status('ep=webgpu'),
      /^Model loaded in [\d.]+ s \(transformer ort, \d WASM threads?; not on WebGPU: no WebGPU adapter\)\.$/);
    assert.match(await status('ep=wasm'), /^Model loaded in [\d.]+ s \(transformer ort, \d WASM threads?\)\.$/);
    assert.equal(await status('ep=cuda'), "Cannot open the model: ?ep must be one of webgpu, wasm, got 'cuda'");
    assert.match(await status('precision=fp16'),
      /^Cannot open the model: the package has no fp16 transformer that onnxruntime can run; it holds fp32, ort, int8, ov$/);
  });

  test('?bench=2 times two more runs of the request: per-step, decode and image times in the status line', async () => {
    const other = await chromium.browser.newPage();
    await other.goto(`${server.url}?ep=wasm&bench=2`);
    await other.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 60000 });
    const result = await generateInPage(other, { width: 96, height: 64, steps: 3, sampler: 'euler' });
    assert.equal(result.state, 'done', result.status);
    assert.match(result.status, /^96×64 in [\d.]+ s on WASM; bench, 2 more runs of 96×64 euler on WASM: step [\d.]+ ms \(median of 6; min [\d.]+ ms\), decode [\d.]+ ms, image [\d.]+ s$/);
    const runs = await other.evaluate(() => globalThis.fitPage.bench);
    assert.equal(runs.length, 2);
    for (const times of runs) {
      assert.equal(times.length, 4);                          // the end of each of the 3 steps, then of the image
      assert.ok(times.every((t, i) => t > (i ? times[i - 1] : 0)), String(times));
    }
    await other.close();
  });

  test('a missing package is one message on the page', async () => {
    const other = await chromium.browser.newPage();
    await other.goto(`${server.url}?package=/missing/`);
    await other.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 60000 });
    const text = await other.$eval('#status', (el) => el.textContent);
    assert.match(text, /^Cannot open the model: package .*\/missing has no manifest\.json \(HTTP 404\)$/);
    await other.close();
  });

  for (const [width, height, extrapolation] of [[96, 64, ''], [128, 128, 'vision-ntk']]) {
    test(`${width}x${height} ${extrapolation || 'package default'} matches fit-run`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'fit-web-'));
      const result = await generateInPage(page, { width, height, class: 7, seed: 5, steps: 8, sampler: 'heun', cfg: 4,
        extrapolation, 'time-shift': '', 'tail-compression': '' });
      assert.equal(result.state, 'done', result.status);
      const args = ['-W', width, '-H', height, '--class', 7, '--seed', 5, '--steps', 8, '--sampler', 'heun', '--cfg', 4,
        '-q', '-o', join(dir, 'py.png'), ...(extrapolation ? ['--extrapolation', extrapolation] : [])].map(String);
      const py = runCli(PYTHON, ['-m', 'cli.run', ...args]);
      assert.equal(py.status, 0, py.stderr);
      const db = psnr(await canvasPixels(page), readPng(join(dir, 'py.png')).pixels);
      console.log(`# page vs fit-run ${width}x${height}: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
      assert.ok(db >= 50, `${db} dB`);
      const saved = join(dir, 'page.png');
      writeFileSync(saved, Uint8Array.from(await page.evaluate(async () => Array.from(await globalThis.fitPage.pngBytes()))));
      const png = readPng(saved);
      assert.deepEqual(png.pixels, await canvasPixels(page));
      assert.equal(png.text['fit:backend'], 'onnxruntime-web');
      assert.equal(JSON.parse(png.text.parameters).extrapolation, extrapolation || 'normal');
      // The same transformer variant as fit-run: the ort copy, its weights passed as external data.
      assert.equal(png.text['fit:variant'], readPng(join(dir, 'py.png')).text['fit:variant']);
      if (process.env.FIT_WEB_SCREENSHOT && width === 128) await page.screenshot({ path: process.env.FIT_WEB_SCREENSHOT });
      rmSync(dir, { recursive: true, force: true });
    });
  }

  test('unipc with time shift 2.5 and tail compression 0.5 matches the Python runtime and the PNG records both',
    async () => {
    const ref = pythonReference({ package: PACKAGE, images: [{ width: 96, height: 64, label: 7, seed: 5, steps: 8,
      sampler: 'unipc', cfg: 4, timeShift: 2.5, tailCompression: 0.5 }] });
    const result = await generateInPage(page, { width: 96, height: 64, class: 7, seed: 5, steps: 8, sampler: 'unipc',
      cfg: 4, extrapolation: '', 'time-shift': '2.5', 'tail-compression': '0.5' });
    assert.equal(result.state, 'done', result.status);
    const db = psnr(await canvasPixels(page), new Uint8Array(readFileSync(join(ref.dir, ref.index.images[0].file))));
    console.log(`# page vs Python runtime, unipc time shift 2.5, tail compression 0.5: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
    assert.ok(db >= 50, `${db} dB`);
    const saved = join(ref.dir, 'page.png');
    writeFileSync(saved, Uint8Array.from(await page.evaluate(async () => Array.from(await globalThis.fitPage.pngBytes()))));
    const { text } = readPng(saved);
    assert.equal(text['fit:time_shift'], '2.5');
    assert.equal(text['fit:tail_compression'], '0.5');
    assert.deepEqual({ ...JSON.parse(text.parameters), backend: null }, { ...ref.index.images[0].parameters, backend: null });
  });
});
