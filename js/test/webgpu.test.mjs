/**
 * The web page on WebGPU: Debian's headless chromium with its software adapter (SwiftShader's Vulkan; fp32, no
 * shader-f16, far slower than a GPU, so 2 steps a case) runs the transformer and the VAE decoder on
 * onnxruntime-web's WebGPU build, and the canvas must match fit-run (>= 40 dB) at 96x64 and at 128x128 with an
 * extrapolation method, for euler and the package's default sampler; changing the size reuses the sessions (no
 * reload); a device lost mid-generation falls back to WASM, which finishes the image, and the page stays usable.
 * Skipped with the reason when the browser offers no WebGPU adapter.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';

import { CHROMIUM, canvasPixels, generateInPage, launchChromium, loadPuppeteer, startFitWeb } from './browser-helpers.mjs';
import { PACKAGE, PYTHON, REPO, psnr, pythonMissing, readPng, runCli } from './helpers.mjs';

const STEPS = 2;
const MIN_DB = 40;
const { sampler: { method: DEFAULT_SAMPLER } } = JSON.parse(readFileSync(join(PACKAGE, 'manifest.json'), 'utf8'));

let reason = pythonMissing()
  ?? (CHROMIUM ? null : 'no chromium (apt-get install -y chromium, or set CHROMIUM)')
  ?? (existsSync(join(REPO, 'js', 'node_modules', 'onnxruntime-web')) ? null : 'run npm ci --prefix js first');
let server;
let chromium;
let page;
const packageFetches = [];
if (!reason) {
  server = await startFitWeb();
  chromium = await launchChromium(await loadPuppeteer(), { webgpu: true });
  page = await chromium.browser.newPage();
  page.on('request', (request) => { if (request.url().includes('/package/')) packageFetches.push(request.url()); });
  await page.goto(server.url);
  await page.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 300000 });
  const state = await page.evaluate(() => ({ ep: globalThis.fitPage.executionProvider, why: globalThis.fitPage.fallback,
    status: document.getElementById('status').textContent }));
  if (state.ep !== 'webgpu') {
    reason = `the browser offers no usable WebGPU adapter (the page says: ${state.why ?? state.status})`;
    await chromium.close();
    server.stop();
  }
}

/** fit-run's image for the page's settings: RGB pixels. */
function fitRun(dir, { width, height, extrapolation, sampler }) {
  const out = join(dir, `py-${width}x${height}-${sampler}.png`);
  const args = ['-W', width, '-H', height, '--class', 7, '--seed', 5, '--steps', STEPS, '--sampler', sampler, '--cfg', 4,
    '-q', '-o', out, ...(extrapolation ? ['--extrapolation', extrapolation] : [])].map(String);
  const py = runCli(PYTHON, ['-m', 'cli.run', ...args]);
  assert.equal(py.status, 0, py.stderr);
  return readPng(out);
}

describe('web page on WebGPU in headless Chromium', { skip: reason ?? false }, () => {
  const dir = reason ? null : mkdtempSync(join(tmpdir(), 'fit-webgpu-'));
  after(async () => {
    await chromium?.close();
    server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('the transformer and the decoder run on WebGPU, fp32 without shader-f16, and the page says so', async () => {
    await page.waitForFunction(() => globalThis.fitPage.pipeline.vae.session !== null, { timeout: 300000 });
    const state = await page.evaluate(() => ({ ep: globalThis.fitPage.executionProvider,
      decoder: globalThis.fitPage.decoderExecutionProvider, variant: globalThis.fitPage.pipeline.variant.name,
      status: document.getElementById('status').textContent }));
    console.log(`# ${state.status}`);
    assert.deepEqual({ ...state, status: undefined }, { ep: 'webgpu', decoder: 'webgpu', variant: 'ort', status: undefined });
    assert.match(state.status, /^Model loaded in [\d.]+ s \(transformer ort on WebGPU \(.*, no shader-f16\); decoder on WebGPU\)\.$/);
  });

  let sessions = null;
  for (const [width, height, extrapolation] of [[96, 64, ''], [128, 128, 'vision-ntk']]) {
    for (const sampler of [...new Set(['euler', DEFAULT_SAMPLER])]) {
      test(`${width}x${height} ${extrapolation || 'default RoPE'} ${sampler} matches fit-run within ${MIN_DB} dB`, async () => {
        if (!sessions) {            // the sessions and the package files of the first image serve every size
          await page.evaluate(() => { globalThis.firstSessions = [globalThis.fitPage.pipeline.backend.session,
            globalThis.fitPage.pipeline.vae.session]; });
          sessions = packageFetches.length;
        }
        const settings = { width, height, extrapolation, sampler };
        const result = await generateInPage(page, { width, height, class: 7, seed: 5, steps: STEPS, sampler, cfg: 4,
          extrapolation, 'time-shift': '' });
        assert.equal(result.state, 'done', result.status);
        assert.match(result.status, new RegExp(`^${width}×${height} in [\\d.]+ s on WebGPU$`));
        const db = psnr(await canvasPixels(page), fitRun(dir, settings).pixels);
        console.log(`# page on WebGPU vs fit-run ${width}x${height} ${sampler}: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
        assert.ok(db >= MIN_DB, `${db} dB`);
        const saved = join(dir, 'page.png');
        writeFileSync(saved, Uint8Array.from(await page.evaluate(async () => Array.from(await globalThis.fitPage.pngBytes()))));
        assert.equal(readPng(saved).text['fit:backend'], 'onnxruntime-web/webgpu');
      });
    }
  }

  test('changing the size did not reload the model: the same sessions, no package file fetched again', async () => {
    assert.notEqual(sessions, null);
    assert.ok(await page.evaluate(() => globalThis.firstSessions[0] === globalThis.fitPage.pipeline.backend.session
      && globalThis.firstSessions[1] === globalThis.fitPage.pipeline.vae.session));
    assert.equal(packageFetches.length, sessions, packageFetches.join(', '));
  });

  test('a device lost mid-generation falls back to WASM, which finishes the image; the page stays usable', async () => {
    const settings = { width: 96, height: 64, extrapolation: '', sampler: 'euler' };
    await page.evaluate(() => {
      for (const [id, value] of Object.entries({ width: 96, height: 64, class: 7, seed: 5, steps: 2, sampler: 'euler',
        cfg: 4, extrapolation: '', 'time-shift': '' })) document.getElementById(id).value = String(value);
      document.body.dataset.state = 'waiting';
      document.getElementById('generate').click();
    });
    await page.waitForFunction(() => document.getElementById('status').textContent.startsWith('Step 1 of'),
      { timeout: 300000, polling: 50 });
    assert.equal(await page.evaluate(() => globalThis.fitPage.loseDevice()), true);
    await page.waitForFunction(() => ['done', 'error'].includes(document.body.dataset.state), { timeout: 300000 });
    const status = await page.$eval('#status', (el) => el.textContent);
    console.log(`# ${status}`);
    assert.equal(await page.evaluate(() => document.body.dataset.state), 'done', status);
    assert.match(status, /^96×64 in [\d.]+ s on WASM \(not on WebGPU: the WebGPU device was lost \(.+\)\)$/);
    assert.equal(await page.evaluate(() => globalThis.fitPage.executionProvider), 'wasm');
    const db = psnr(await canvasPixels(page), fitRun(dir, settings).pixels);
    console.log(`# after the device loss, on WASM, vs fit-run: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
    assert.ok(db >= MIN_DB, `${db} dB`);
    const again = await generateInPage(page, { width: 128, height: 128, steps: 1 });
    assert.equal(again.state, 'done', again.status);
    assert.match(again.status, /on WASM/);
  });
});
