/**
 * Same seed -> same image: the JavaScript runtime against the Python runtime (engines, behind fit-run) on the
 * default model, for sizes on and off the training budget, every sampler, time shifts, every extrapolation method
 * and guidance on/off; RoPE tables of every method name, the portable noise and the fixed-grid samplers on a
 * synthetic velocity field against engines.rope / engines.noise / engines.sampler.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { before, describe, test } from 'node:test';

import { EXTRAPOLATIONS, EXTRAPOLATION_ALIASES, normals, ropeTables } from '../src/index.js';
import { withMethod } from '../src/rope.js';
import { SHIFTED, guidanceScale, integrate } from '../src/sampler.js';
import { loadPackage } from '../src/node.js';
import { plain } from '../src/params.js';
import { PACKAGE, psnr, pythonMissing, pythonReference, readFloat32 } from './helpers.mjs';

const SIZES = [[96, 64], [80, 80], [128, 128], [64, 128]];
const SAMPLERS = ['euler', 'heun', 'dopri5', 'sde', 'ab2', 'unipc'];
const CANONICAL = ['normal', 'linear', 'ntk-aware', 'ntk-by-parts', 'yarn', 'ntk-aware-pro1', 'ntk-aware-pro2',
  'vision-ntk', 'vision-yarn'];

function imageCases() {
  const cases = [];
  SIZES.forEach(([width, height], i) => cases.push({ width, height, label: 'star', seed: 10 + i, steps: 6 }));
  for (const sampler of SAMPLERS) {
    for (const [width, height] of [[96, 64], [128, 128]]) {
      cases.push({ width, height, label: 'circle', seed: 3, sampler, steps: 5 });
    }
  }
  for (const extrapolation of CANONICAL) {
    for (const [width, height] of [[128, 128], [64, 128]]) {
      cases.push({ width, height, label: 'ring', seed: 5, steps: 4, sampler: 'euler', extrapolation });
    }
  }
  for (const cfg of [1, 2.5]) cases.push({ width: 96, height: 64, label: 'square', seed: 8, steps: 4, cfg });
  cases.push({ width: 80, height: 80, label: null, seed: 2, steps: 4, cfg: 4 });
  return cases;
}

/**
 * The new samplers on shifted grids, without and with tail compression: pixel-identical (the host arithmetic is the
 * same, operation by operation).
 */
function shiftedCases() {
  const cases = [];
  for (const sampler of ['ab2', 'unipc']) {
    for (const [timeShift, tailCompression] of [[1, 0], [2, 0], [3, 0], [6, 1], [4, 0.5]]) {
      for (const cfg of [1, 4]) {
        cases.push({ width: 96, height: 64, label: 'ring', seed: 6, sampler, steps: 6, timeShift, tailCompression,
          cfg });
        cases.push({ width: 128, height: 128, label: 'star', seed: 7, sampler, steps: 6, timeShift, tailCompression,
          cfg, extrapolation: 'vision-ntk' });
      }
    }
  }
  for (const sampler of ['euler', 'heun']) {
    cases.push({ width: 96, height: 64, label: 'frame', seed: 8, sampler, steps: 5, timeShift: 3, tailCompression: 0.75,
      cfg: 4 });
  }
  return cases;
}

// Every fixed-grid sampler, steps 1 to 40, on the grids of these time shifts and tail compressions
// (engines.sampler's UniPC scalars come from its own log1p, which any language computes to the same bits).
const GRIDS = [[1, 0], [2, 0], [3, 0], [2.5, 0], [4, 0], [6, 0], [1, 1], [3, 0.5], [6, 1], [2.5, 0.75], [100, 1],
  [0.01, 0.3]];
const SYNTHETIC = SHIFTED.flatMap((method) => GRIDS.flatMap(([shift, tail]) =>
  Array.from({ length: 40 }, (_, i) => ({ method, steps: i + 1, shift, tail }))));

const TABLE_SIZES = [[5, 5], [8, 8], [4, 8], [8, 4], [3, 11], [1, 1]];
// Every accepted name on a package whose own RoPE is decoupled: an official name must couple the axes again.
const tableCases = () => [...EXTRAPOLATIONS, ...Object.keys(EXTRAPOLATION_ALIASES)].flatMap((method) =>
  TABLE_SIZES.map(([h, w]) => ({ method, h, w, head_dim: 64, theta: 10000, ori: 5, decouple: true })));
const NOISE = [{ seed: '0', count: 1001, block: 0 }, { seed: '7', count: 64, block: 3 },
  { seed: '18446744073709551615', count: 257, block: 1 }, { seed: '123456789012345', count: 20000, block: 0 }];

const GUIDANCE = [0, 0.5, 1, 2.5].map((scalePow) => ({ cfg: 4.5, scale_pow: scalePow,
  t: Array.from({ length: 41 }, (_, i) => Math.fround(i / 40)) }));

const missing = pythonMissing();

describe('parity with the Python runtime', { skip: missing ?? false }, () => {
  let ref;
  let pipe;
  const cases = imageCases();
  const shifted = shiftedCases();
  before(async () => {
    ref = pythonReference({ package: PACKAGE, images: [...cases, ...shifted], tables: tableCases(), noise: NOISE,
      guidance: GUIDANCE, samplers: SYNTHETIC });
    pipe = await loadPackage(PACKAGE);
  });

  test('noise is bit-identical', () => {
    NOISE.forEach((n, i) => {
      const expected = readFloat32(join(ref.dir, ref.index.noise[i]));
      const got = normals(BigInt(n.seed), n.count, n.block);
      let differ = 0;
      for (let j = 0; j < got.length; j++) if (got[j] !== expected[j]) differ++;
      assert.equal(differ, 0, `seed ${n.seed} block ${n.block}: ${differ} of ${n.count} values differ`);
    });
  });

  test('guidance scales (power-cosine schedule) are bit-identical', () => {
    GUIDANCE.forEach((g, i) => {
      assert.deepEqual(g.t.map((t) => guidanceScale(g.cfg, t, g.scale_pow)), ref.index.guidance[i], `scale_pow ${g.scale_pow}`);
    });
  });

  test('RoPE tables of every extrapolation name are bit-identical to engines.rope', () => {
    tableCases().forEach((c, i) => {
      const data = readFloat32(join(ref.dir, ref.index.tables[i]));
      const settings = withMethod({ headDim: 64, theta: 10000, method: 'normal', decouple: c.decouple, oriMaxPeLen: 5 },
        c.method, 5);
      const { cos, sin } = ropeTables(settings, c.h, c.w);
      let differ = 0;
      for (let j = 0; j < cos.length; j++) differ += (cos[j] !== data[j]) + (sin[j] !== data[cos.length + j]);
      assert.equal(differ, 0, `${c.method} ${c.h}x${c.w}: ${differ} of ${2 * cos.length} values differ`);
    });
  });

  test('fixed-grid samplers on shifted grids are bit-identical to engines.sampler', async () => {
    const x0 = normals(1n, 64, 0);
    const d = normals(2n, 64, 0);
    const velocity = async (x, t) => Float32Array.from(x, (value, j) => Math.fround(d[j] - value)
      * Math.fround(1 + t[Math.floor(j / 32)]));
    for (let i = 0; i < SYNTHETIC.length; i++) {
      const { method, steps, shift, tail } = SYNTHETIC[i];
      const times = [];
      const settings = { method, steps, atol: 1e-6, rtol: 1e-3, timeShift: shift, tailCompression: tail };
      const got = await integrate(velocity, x0, 2, settings, null, (_done, _total, t) => times.push(t));
      const expected = readFloat32(join(ref.dir, ref.index.samplers[i].file));
      const name = `${method} steps ${steps} shift ${shift} tail ${tail}`;
      assert.deepEqual(times, ref.index.samplers[i].times, `${name}: times`);
      let differ = 0;
      for (let j = 0; j < got.length; j++) differ += !Object.is(got[j], expected[j]);
      assert.equal(differ, 0, `${name}: ${differ} of ${got.length} values differ`);
    }
  });

  test('images match fit-run\'s runtime (>= 50 dB) with the same parameters', async () => {
    const report = [];
    for (let i = 0; i < cases.length; i++) {
      const c = cases[i];
      const expected = new Uint8Array(readFileSync(join(ref.dir, ref.index.images[i].file)));
      const image = await pipe.generate(c);
      const db = psnr(image.pixels, expected);
      report.push(`${c.width}x${c.height} ${c.sampler ?? 'default'} ${c.extrapolation ?? '-'} cfg=${c.cfg ?? '-'}: `
        + `${db === Infinity ? 'identical' : `${db.toFixed(1)} dB`}`);
      assert.ok(db >= 50, `case ${JSON.stringify(c)}: ${db.toFixed(1)} dB`);
      const params = plain(image.parameters);
      const pyParams = ref.index.images[i].parameters;
      assert.deepEqual({ ...params, backend: null }, { ...pyParams, backend: null });
    }
    const identical = report.filter((line) => line.endsWith('identical')).length;
    console.log(`# ${identical} of ${cases.length} cases pixel-identical\n# ${report.join('\n# ')}`);
  });

  test('the fixed-grid samplers on shifted and tail-compressed grids give fit-run\'s runtime\'s pixels and '
    + 'parameters', async () => {
    for (let i = 0; i < shifted.length; i++) {
      const c = shifted[i];
      const { file, parameters } = ref.index.images[cases.length + i];
      const image = await pipe.generate(c);
      const db = psnr(image.pixels, new Uint8Array(readFileSync(join(ref.dir, file))));
      assert.equal(db, Infinity, `case ${JSON.stringify(c)}: ${db.toFixed(1)} dB`);
      assert.deepEqual({ ...plain(image.parameters), backend: null }, { ...parameters, backend: null });
      assert.equal(parameters.time_shift, c.timeShift);
      assert.equal(parameters.tail_compression, c.tailCompression || undefined);       // recorded when not 0
    }
  });

  test('a padded batch gives each image what it gives alone', async () => {
    const requests = [{ width: 96, height: 64, label: 1, seed: 4 }, { width: 128, height: 128, label: 2, seed: 9 },
      { width: 64, height: 64, label: null, seed: 1 }];
    const jobs = requests.map((r) => pipe.prepare({ ...r, steps: 3, sampler: 'sde', cfg: 3 }).at(0));
    const batch = await pipe.generateMany(jobs);
    for (let i = 0; i < jobs.length; i++) {
      const [alone] = await pipe.generateMany([jobs[i]]);
      assert.ok(psnr(alone.pixels, batch[i].pixels) >= 60, `request ${i}`);
    }
    // Per-request guidance scale and extrapolation inside one step loop (engines.pipeline.sample_latents).
    const own = [{ cfg: 2, extrapolation: 'normal' }, { cfg: 5, extrapolation: 'vision-ntk' }, { cfg: 3, extrapolation: 'yarn' }];
    const mixed = requests.map((r, i) => pipe.prepare({ ...r, steps: 3, sampler: 'heun', ...own[i] }).at(0));
    const latents = await pipe.sampleLatents(mixed);
    for (let i = 0; i < mixed.length; i++) {
      const [alone] = await pipe.generateMany([mixed[i]]);
      const pixels = await pipe.decode(latents[i], mixed[i].request.height, mixed[i].request.width);
      assert.ok(psnr(alone.pixels, pixels) >= 60, `request ${i} with its own settings`);
    }
  });
});
