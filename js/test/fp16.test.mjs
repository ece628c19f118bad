/**
 * A freshly exported fp16 package (the tiny test model: float16 x and v, guidance on 3 of 4 channels, no VAE
 * decoder so images use the preview map) gives the same images in JavaScript as in Python; so does the fp16 variant
 * that `fit-export fp16` adds to an fp32 package (float32 x and v, float16 inside), with `node fit-run --precision
 * fp16` against `fit-run --precision fp16`.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import { loadPackage } from '../src/node.js';
import { FIT_RUN_JS, FULL_PYTHON, PYTHON, REPO, psnr, pythonEnv, pythonMissing, pythonReference, readPng, runCli }
  from './helpers.mjs';

const EXPORT = `
import sys
from tests.runtime_helpers import tiny_model
from fit_export import export_package
export_package(tiny_model(), None, sys.argv[1], precision="fp16")
`;

const WITH_VARIANT = `
import sys
from tests.runtime_helpers import tiny_model
from fit_export import export_package
from fit_export.fp16_variant import add_fp16_variant
add_fp16_variant(export_package(tiny_model(), None, sys.argv[1]), steps=2)
`;

const reason = pythonMissing() ?? (FULL_PYTHON ? null : 'no .venv with torch to export a test package');

describe('fp16 package with the preview decoder', { skip: reason ?? false }, () => {
  let dir;
  let ref;
  const cases = [{ width: 64, height: 32, label: 3, seed: 0, steps: 3, sampler: 'euler', cfg: 2 },
    { width: 48, height: 48, label: null, seed: 1, steps: 2, sampler: 'heun' },
    { width: 32, height: 64, label: 5, seed: 2, steps: 3, sampler: 'sde', cfg: 3, extrapolation: 'yarn' }];
  before(() => {
    dir = join(mkdtempSync(join(tmpdir(), 'fit-js-fp16-')), 'tiny16');
    execFileSync(FULL_PYTHON, ['-c', EXPORT, dir], { cwd: REPO, env: pythonEnv, stdio: ['ignore', 'ignore', 'inherit'] });
    ref = pythonReference({ package: dir, images: cases });
  });

  test('images match the Python runtime', async () => {
    const pipe = await loadPackage(dir);
    assert.equal(pipe.manifest.transformer.precision, 'fp16');
    assert.equal(pipe.manifest.vae_decoder, null);
    for (let i = 0; i < cases.length; i++) {
      const image = await pipe.generate(cases[i]);
      const expected = new Uint8Array(readFileSync(join(ref.dir, ref.index.images[i].file)));
      const db = psnr(image.pixels, expected);
      console.log(`# fp16 ${cases[i].width}x${cases[i].height} ${cases[i].sampler}: ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
      assert.ok(db >= 50, `case ${i}: ${db} dB`);
    }
    await pipe.release();
  });
});

describe('fp16 variant of an fp32 package (fit-export fp16)', { skip: reason ?? false }, () => {
  let dir;
  before(() => {
    dir = join(mkdtempSync(join(tmpdir(), 'fit-js-fp16-variant-')), 'tiny');
    execFileSync(FULL_PYTHON, ['-c', WITH_VARIANT, dir], { cwd: REPO, env: pythonEnv,
      stdio: ['ignore', 'ignore', 'inherit'] });
  });

  test('picked only when asked for or on a float16 device; float32 feeds as for fp32', async () => {
    const plain = await loadPackage(dir);
    const half = await loadPackage(dir, { fp16: true });
    const asked = await loadPackage(dir, { precision: 'fp16' });
    assert.deepEqual([plain.variant.name, half.variant.name, asked.variant.name], ['fp32', 'fp16', 'fp16']);
    assert.equal(asked.contract.activationDtype, 'float32');
    const request = { width: 64, height: 32, label: 3, seed: 7, steps: 3, sampler: 'euler', cfg: 2 };
    const db = psnr((await asked.generate(request)).pixels, (await plain.generate(request)).pixels);
    console.log(`# fp16 variant vs fp32 in JavaScript: ${db.toFixed(1)} dB`);
    assert.ok(db < Infinity && db >= 40, `${db} dB`);                 // float16 storage shows, within the bar
    await Promise.all([plain.release(), half.release(), asked.release()]);
  });

  test('node fit-run --precision fp16 gives fit-run --precision fp16\'s image (>= 50 dB, same text chunks)', () => {
    const out = mkdtempSync(join(tmpdir(), 'fit-js-fp16-run-'));
    const args = [dir, '-W', '48', '-H', '80', '--class', '5', '--seed', '3', '--steps', '4', '--extrapolation', 'yarn',
      '-q', '--precision', 'fp16'];
    const py = runCli(PYTHON, ['-m', 'cli.run', ...args, '-o', join(out, 'py.png')]);
    const js = runCli(process.execPath, [FIT_RUN_JS, ...args, '-o', join(out, 'js.png')]);
    assert.equal(py.status, 0, py.stderr);
    assert.equal(js.status, 0, js.stderr);
    const [a, b] = [readPng(join(out, 'py.png')), readPng(join(out, 'js.png'))];
    const db = psnr(a.pixels, b.pixels);
    console.log(`# fp16 variant: node fit-run vs fit-run ${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
    assert.ok(db >= 50, `${db} dB`);
    assert.equal(b.text['fit:variant'], 'fp16');
    const strip = (text) => ({ ...text, 'fit:backend': null, parameters: text.parameters.replace(/"backend": "[^"]*"/, '') });
    assert.deepEqual(strip(b.text), strip(a.text));
  });
});
