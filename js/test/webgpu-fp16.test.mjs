/**
 * The page and a package with an fp16 variant (the shipped model plus `fit-export fp16`), in headless Chromium with
 * its software WebGPU adapter (SwiftShader: no shader-f16): without ?precision the page runs the fp32 default, not
 * the fp16 variant; with ?precision=fp16 it runs the fp16 variant on WASM, the status line says why not on WebGPU,
 * and the image is fit-run --precision fp16's (>= 50 dB). Where the browser offers no adapter at all, the same
 * requests run on WASM for that reason.
 */
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { CHROMIUM, canvasPixels, generateInPage, launchChromium, loadPuppeteer, startFitWeb } from './browser-helpers.mjs';
import { FULL_PYTHON, PACKAGE, PYTHON, REPO, psnr, pythonMissing, readPng, runCli } from './helpers.mjs';

const reason = pythonMissing()
  ?? (FULL_PYTHON ? null : 'no .venv with the export tools to add an fp16 variant')
  ?? (CHROMIUM ? null : 'no chromium (apt-get install -y chromium, or set CHROMIUM)')
  ?? (existsSync(join(REPO, 'js', 'node_modules', 'onnxruntime-web')) ? null : 'run npm ci --prefix js first');
const REQUEST = { width: 96, height: 64, class: 7, seed: 5, steps: 2, sampler: 'euler', cfg: 4, extrapolation: '',
  'time-shift': '' };

describe('web page and an fp16 variant, WebGPU without shader-f16', { skip: reason ?? false }, () => {
  let dir;
  let server;
  let chromium;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'fit-web-fp16-'));
    cpSync(PACKAGE, join(dir, 'model'), { recursive: true });
    const added = runCli(FULL_PYTHON, ['-m', 'cli.export', 'fp16', join(dir, 'model'), '--steps', '2']);
    assert.equal(added.status, 0, added.stderr);
    server = await startFitWeb(join(dir, 'model'));
    chromium = await launchChromium(await loadPuppeteer(), { webgpu: true });
  });
  after(async () => {
    await chromium?.close();
    server?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** Open the page with `search`; resolves to {page, ep, variant, fallback, status, adapter}. */
  async function open(search) {
    const page = await chromium.browser.newPage();
    await page.goto(`${server.url}${search}`);
    await page.waitForFunction(() => ['ready', 'failed'].includes(document.body.dataset.state), { timeout: 300000 });
    const state = await page.evaluate(async () => ({ ep: globalThis.fitPage.executionProvider,
      variant: globalThis.fitPage.pipeline?.variant.name, fallback: globalThis.fitPage.fallback,
      status: document.getElementById('status').textContent,
      adapter: Boolean(await navigator.gpu?.requestAdapter()) }));
    return { page, ...state };
  }

  test('without ?precision the fp32 default runs, not the fp16 variant', async () => {
    const { page, ep, variant, status, adapter } = await open('');
    console.log(`# ${status}`);
    assert.equal(variant, 'ort', status);
    assert.equal(ep, adapter ? 'webgpu' : 'wasm', status);
    await page.close();
  });

  test('?precision=fp16 runs the fp16 variant on WASM, says why, and gives fit-run --precision fp16\'s image',
    async () => {
      const { page, ep, variant, fallback, status, adapter } = await open('?precision=fp16');
      console.log(`# ${status}`);
      assert.deepEqual([ep, variant], ['wasm', 'fp16'], status);
      if (adapter) {
        assert.match(fallback, /^transformer fp16 computes in float16 and needs shader-f16, which this adapter \(.+\) lacks$/);
        assert.match(status, /^Model loaded in [\d.]+ s \(transformer fp16, \d+ WASM threads?; not on WebGPU: transformer fp16 computes in float16 and needs shader-f16, which this adapter \(.+\) lacks\)\.$/);
      }
      const result = await generateInPage(page, REQUEST);
      assert.equal(result.state, 'done', result.status);
      assert.match(result.status, /^96×64 in [\d.]+ s on WASM/);
      const out = join(dir, 'py.png');
      const py = runCli(PYTHON, ['-m', 'cli.run', join(dir, 'model'), '--precision', 'fp16', '-W', '96', '-H', '64',
        '--class', '7', '--seed', '5', '--steps', '2', '--sampler', 'euler', '--cfg', '4', '-q', '-o', out]);
      assert.equal(py.status, 0, py.stderr);
      const db = psnr(await canvasPixels(page), readPng(out).pixels);
      console.log(`# fp16 variant, page on WASM vs fit-run --precision fp16: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
      assert.ok(db >= 50, `${db} dB`);
      await page.close();
    });
});
