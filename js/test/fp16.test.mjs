/**
 * A freshly exported fp16 package (the tiny test model: float16 x and v, guidance on 3 of 4 channels, no VAE
 * decoder so images use the preview map) gives the same images in JavaScript as in Python.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import { loadPackage } from '../src/node.js';
import { FULL_PYTHON, REPO, psnr, pythonEnv, pythonMissing, pythonReference } from './helpers.mjs';

const EXPORT = `
import sys
from tests.runtime_helpers import tiny_model
from fit_export import export_package
export_package(tiny_model(), None, sys.argv[1], precision="fp16")
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
