/**
 * Rectified-flow samplers and classifier-free guidance (docs/runtime-spec.md §7-8). State arrays are Float32Array
 * of the whole padded batch (B, N, C); every operation rounds to float32 as the specification says.
 * @module sampler
 */

import { formatG, pyRepr, pyTypeName } from './params.js';

const f32 = Math.fround;

export const SAMPLERS = ['euler', 'heun', 'dopri5', 'sde', 'ab2', 'unipc'];
/**
 * The samplers that step along a fixed time grid, which the time shift and the tail compression bend; dopri5 chooses
 * its own steps and sde keeps the official schedule.
 */
export const SHIFTED = ['euler', 'heun', 'ab2', 'unipc'];
/** Limits of a request (docs/runtime-spec.md §9): sampler steps and guidance scale. */
export const MAX_STEPS = 10000;
export const MAX_CFG = 1000;
export const MIN_TIME_SHIFT = 0.01;
export const MAX_TIME_SHIFT = 100;
export const MAX_TAIL_COMPRESSION = 1;

/**
 * A sampler or guidance setting out of range; `parameter` names it (`steps`, `cfg`, `time_shift`,
 * `tail_compression`), and the message
 * starts with it.
 */
export class SettingError extends RangeError {
  constructor(message, parameter = null) { super(message); this.name = 'SettingError'; this.parameter = parameter; }
}

/**
 * `steps` as a number if it is a whole number from 1 to `maximum` (at most MAX_STEPS); SettingError otherwise.
 * @param {any} steps
 * @param {number} [maximum]
 */
export function checkSteps(steps, maximum = MAX_STEPS) {
  if (pyTypeName(steps) !== 'int' || !(steps >= 1 && steps <= maximum)) {
    throw new SettingError(`steps must be a whole number from 1 to ${maximum.toLocaleString('en-US')}, got `
      + `${pyRepr(steps)}`, 'steps');
  }
  return Number(steps);
}

/**
 * `shift` (a number, or {float} for a value that is a float in Python's sense) as a number if it is a finite number
 * above 0; SettingError otherwise.
 * @param {any} shift
 */
export function checkTimeShift(shift) {
  const value = shift !== null && typeof shift === 'object' && 'float' in shift ? shift.float : shift;
  if (typeof value !== 'number' || !(value >= MIN_TIME_SHIFT && value <= MAX_TIME_SHIFT)) {
    throw new SettingError(`time_shift must be a number from ${formatG(MIN_TIME_SHIFT)} to ${formatG(MAX_TIME_SHIFT)}, `
      + `got ${pyRepr(shift)}`, 'time_shift');
  }
  return value;
}

/**
 * `compression` (a number, or {float} for a value that is a float in Python's sense) as a number if it is a number
 * from 0 to MAX_TAIL_COMPRESSION; SettingError otherwise (NaN too).
 * @param {any} compression
 */
export function checkTailCompression(compression) {
  const value = compression !== null && typeof compression === 'object' && 'float' in compression
    ? compression.float : compression;
  if (typeof value !== 'number' || !(value >= 0 && value <= MAX_TAIL_COMPRESSION)) {
    throw new SettingError(`tail_compression must be a number from 0 to ${formatG(MAX_TAIL_COMPRESSION)}, got `
      + `${pyRepr(compression)}`, 'tail_compression');
  }
  return value;
}

/**
 * `cfg` (a number, or {float} for a value that is a float in Python's sense) as a number if it is a guidance scale
 * from 0 to `maximum` (at most MAX_CFG); SettingError otherwise (NaN too).
 * @param {any} cfg
 * @param {number} [maximum]
 */
export function checkCfg(cfg, maximum = MAX_CFG) {
  const value = cfg !== null && typeof cfg === 'object' && 'float' in cfg ? cfg.float : cfg;
  if (typeof value !== 'number' || !(value >= 0 && value <= maximum)) {
    throw new SettingError(`cfg must be a number from 0 to ${formatG(maximum)}, got ${pyRepr(cfg)}`, 'cfg');
  }
  return value;
}

/**
 * How to integrate from noise to data (engines.sampler.SamplerSettings); the sde sampler's `diffusionNorm` and
 * `lastStepSize` default to the official 1 and 0.04.
 * @typedef {object} SamplerSettings
 * @property {string} method euler | heun | ab2 | unipc (on a time grid bent by `timeShift` and `tailCompression`) |
 *   dopri5 | sde
 * @property {number} steps
 * @property {number} atol dopri5 absolute tolerance
 * @property {number} rtol dopri5 relative tolerance
 * @property {number} [timeShift] the time shift of the fixed-grid samplers (SHIFTED); 1 (the default) = even steps
 * @property {number} [tailCompression] their tail compression (timeGrid); 0 (the default) = none
 * @property {number} [diffusionNorm]
 * @property {number} [lastStepSize]
 */

/**
 * @callback Velocity
 * @param {Float32Array} x (B, N, C)
 * @param {number[]} t per-request float32 times
 * @returns {Promise<Float32Array>}
 */
/**
 * @callback Progress
 * @param {number} done steps done
 * @param {number|null} total total steps (null for dopri5)
 * @param {number} t time reached
 */

/**
 * Per-request guidance scale.
 * @param {number} cfg
 * @param {number} t float32 time
 * @param {number} scalePow
 */
export function guidanceScale(cfg, t, scalePow) {
  if (scalePow === 0) return f32(cfg);
  const base = f32(1 - Math.min(t, 1));
  const angle = f32(f32(Math.pow(base, f32(scalePow))) * f32(Math.PI));   // pow, cos in float64, rounded once
  const step = f32(f32(1 - f32(Math.cos(angle))) / 2);
  return f32(f32(f32(cfg - 1) * step) + 1);
}

/**
 * Mix a [cond; uncond] output (2B, N, C) into (B, N, C): the first `guided` channels of each token are guided.
 * @param {Float32Array} out
 * @param {number} batch B
 * @param {number} channels C
 * @param {number} cfg
 * @param {number[]} t
 * @param {number} guided
 * @param {number} scalePow
 */
export function guide(out, batch, channels, cfg, t, guided, scalePow) {
  // cfg: one guidance scale, or one per request
  const half = out.length / 2;
  const perSample = half / batch;
  const mixed = new Float32Array(half);
  for (let b = 0; b < batch; b++) {
    const s = guidanceScale(typeof cfg === 'number' ? cfg : cfg[b], t[b], scalePow);
    for (let i = b * perSample; i < (b + 1) * perSample; i++) {
      const cond = out[i];
      if (i % channels < guided) {
        const uncond = out[half + i];
        mixed[i] = uncond + f32(s * f32(cond - uncond));
      } else mixed[i] = cond;
    }
  }
  return mixed;
}

const full = (t, batch) => new Array(batch).fill(f32(t));

const map = (n, fn) => {
  const out = new Float32Array(n);
  for (let j = 0; j < n; j++) out[j] = fn(j);
  return out;
};

// ------------------------------------------------------------------------------------------------------------
// Fixed-step samplers
// ------------------------------------------------------------------------------------------------------------

/**
 * u / (u + shift (1 - u)) in float64: the time at fraction u of the steps (u itself when shift is 1). With shift > 1
 * the steps are shorter near noise (t = 0), as in SD3 and Flux; u = 0 and 1 stay 0 and 1.
 */
export function shiftTime(u, shift) {
  return shift === 1 ? u : u / (u + shift * (1 - u));
}

/**
 * t + c t (1 - t) in float64 (t itself when c is 0): with c > 0 the steps are shorter near data (t = 1), where the long
 * last step of a shifted grid costs the most; c = 1 gives 1 - (1 - t)^2. 0 and 1 stay 0 and 1.
 */
export function compressTail(t, compression) {
  return compression === 0 ? t : t + compression * t * (1 - t);
}

/**
 * The [t0, t1] of each of `steps` steps from 0 to 1, computed as they are needed: u_i = i * (1 / steps) in float64,
 * u_steps = 1, and t_i = compressTail(shiftTime(u_i, shift), tail).
 * @returns {Generator<[number, number]>}
 */
export function* timeGrid(steps, shift = 1, tail = 0) {
  const h = 1 / steps;
  const at = (u) => compressTail(shiftTime(u, shift), tail);
  for (let i = 0; i < steps; i++) yield [at(i * h), at(i + 1 === steps ? 1 : (i + 1) * h)];
}

/** x <- x + (t1 - t0) v(x, t0); one evaluation per step. @returns {Promise<Float32Array>} */
export async function euler(v, x, batch, steps, progress, shift = 1, tail = 0) {
  let i = 0;
  for (const [t0, t1] of timeGrid(steps, shift, tail)) {
    const h = f32(t1 - t0);
    const vel = await v(x, full(t0, batch));
    const y = x;
    x = map(y.length, (j) => y[j] + f32(h * vel[j]));
    progress?.(++i, steps, t1);
  }
  return x;
}

/** Explicit trapezoidal rule (second order), two evaluations per step. @returns {Promise<Float32Array>} */
export async function heun(v, x, batch, steps, progress, shift = 1, tail = 0) {
  let i = 0;
  for (const [t0, t1] of timeGrid(steps, shift, tail)) {
    const h = t1 - t0;
    const h32 = f32(h);
    const half = f32(0.5 * h);
    const y = x;
    const k1 = await v(y, full(t0, batch));
    const k2 = await v(map(y.length, (j) => y[j] + f32(h32 * k1[j])), full(t1, batch));
    x = map(y.length, (j) => y[j] + f32(half * f32(k1[j] + k2[j])));
    progress?.(++i, steps, t1);
  }
  return x;
}

/**
 * Two-step Adams-Bashforth for uneven steps (second order), one evaluation per step: with h = t1 - t0 and
 * r = h / (t0 - t_prev), x <- x + h (1 + r/2) v(x, t0) - h (r/2) v_prev; the first step is Euler's.
 * @returns {Promise<Float32Array>}
 */
export async function ab2(v, x, batch, steps, progress, shift = 1, tail = 0) {
  let previous = null;                                 // [h, k] of the step before
  let i = 0;
  for (const [t0, t1] of timeGrid(steps, shift, tail)) {
    const h = t1 - t0;
    const k = await v(x, full(t0, batch));
    const y = x;
    if (previous === null) {
      const h32 = f32(h);
      x = map(y.length, (j) => y[j] + f32(h32 * k[j]));
    } else {
      const [hPrevious, kPrevious] = previous;
      const r = h / hPrevious;
      const a = f32(h * (1 + 0.5 * r));
      const b = f32(0.5 * h * r);
      x = map(y.length, (j) => f32(y[j] + f32(a * k[j])) - f32(b * kPrevious[j]));
    }
    previous = [h, k];
    progress?.(++i, steps, t1);
  }
  return x;
}

// UniPC's scalars come from log(1 + x) computed with +, -, * and / alone, so that every runtime, in any language and
// on any platform, computes the same bits (the C library's log and expm1 and JavaScript's differ in the last bit
// for some inputs, and a coefficient rounded to float32 the other way changes the image).
const LN2 = 0.6931471805599453;                        // float64 nearest log 2
const SQRT2 = 1.4142135623730951;                      // float64 nearest sqrt 2
const ATANH = [23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1].map((n) => 1 / n);   // 1/23, 1/21, ..., 1/3, 1

/**
 * log(1 + x) for x >= 0 (a few ulp): 1 + x = m 2^k with m in [sqrt(1/2), sqrt(2)) and log m = 2 atanh(f),
 * f = (m - 1) / (m + 1), |f| < 0.172, summed to f^23; below sqrt(2) - 1, m - 1 is x itself (no rounding of 1 + x).
 */
function log1p(x) {
  let k = 0;
  let d = x;                                           // m - 1
  if (x >= SQRT2 - 1) {
    let m = 1 + x;
    while (m >= SQRT2) {
      m *= 0.5;                                        // exact
      k += 1;
    }
    d = m - 1;                                         // exact: m is within a factor of 2 of 1
  }
  const f = d / (2 + d);
  const f2 = f * f;
  let total = 0;
  for (const c of ATANH) total = total * f2 + c;
  return k * LN2 + 2 * f * total;
}

/**
 * lambda(t) - lambda(s) for 0 <= s < t <= 1, lambda(t) = log(t / (1 - t)) the log signal-to-noise ratio of the
 * linear path (alpha = t, sigma = 1 - t): log1p((t - s) / (s (1 - t))); Infinity when s = 0 or t = 1.
 */
function logSnrStep(s, t) {
  return s <= 0 || t >= 1 ? Infinity : log1p((t - s) / (s * (1 - t)));
}

/**
 * One UniPC step s -> t in data prediction (B(h) = e^h - 1): the predictor UniP-2 when `mT` is null, else the
 * corrector UniC with the data prediction `mT` at t. `before`: [time, data prediction] of the point before s, or
 * null; it raises the order when the step from there to s and h are finite.
 * @returns {Float32Array}
 */
function unipcUpdate(xS, s, t, mS, before, mT) {
  const n = xS.length;
  const h = logSnrStep(s, t);
  const phi = (s - t) / (t * (1 - s));                 // e^-h - 1 (-1 when h is Infinity)
  const a = f32((1 - t) / (1 - s));
  const b = f32(t * phi);
  const base = map(n, (j) => f32(a * xS[j]) - f32(b * mS[j]));
  const second = before !== null && before[0] > 0 && Number.isFinite(h);
  let r;
  let d1;
  if (second) {
    r = -logSnrStep(before[0], s) / h;
    const r32 = f32(r);
    const mBefore = before[1];
    d1 = map(n, (j) => f32(mBefore[j] - mS[j]) / r32);
  }
  if (mT === null) {
    if (!second) return base;
    const c = f32(t * phi * 0.5);
    return map(n, (j) => base[j] - f32(c * d1[j]));
  }
  if (!second) {
    const c = f32(t * phi * 0.5);
    return map(n, (j) => base[j] - f32(c * f32(mT[j] - mS[j])));
  }
  const hh = -h;
  const b1 = (phi / hh - 1) / phi;
  const b2 = ((phi / hh - 1) / hh - 0.5) * 2 / phi;
  const rho1 = (b1 - b2) / (1 - r);
  const rho2 = b1 - rho1;
  const c = f32(t * phi);
  const c1 = f32(rho1);
  const c2 = f32(rho2);
  return map(n, (j) => base[j] - f32(c * f32(f32(c1 * d1[j]) + f32(c2 * f32(mT[j] - mS[j])))));
}

/**
 * UniPC (Zhao et al. 2023), second order, for velocity models: each evaluation v(x, t_i) gives the data prediction
 * m_i = x + (1 - t_i) v; it first corrects the step that led to t_i (UniC, using m_i: no extra evaluation), then
 * predicts the next point (UniP-2). One evaluation per step; the last step is first order (it lands on the data
 * prediction).
 * @returns {Promise<Float32Array>}
 */
export async function unipc(v, x, batch, steps, progress, shift = 1, tail = 0) {
  let previous = null;                                 // [xS, s, mS, before] of the step that led here
  let before = null;
  let i = 0;
  for (const [t0, t1] of timeGrid(steps, shift, tail)) {
    const k = await v(x, full(t0, batch));
    const a = f32(1 - t0);
    const y = x;
    const m = map(y.length, (j) => y[j] + f32(a * k[j]));
    if (previous !== null) {
      const [xS, s, mS, beforeS] = previous;
      x = unipcUpdate(xS, s, t0, mS, beforeS, m);
      before = [s, mS];
    }
    previous = [x, t0, m, before];
    x = unipcUpdate(x, t0, t1, m, before, null);
    progress?.(++i, steps, t1);
  }
  return x;
}

/**
 * The official SDE sampler on the linear path (official defaults: diffusion norm 1, last step 0.04); `draw(size)`
 * gives each step's noise (B, N, C), once per step in order (noise.js sdeDraw).
 * @returns {Promise<Float32Array>}
 */
export async function sde(v, x, batch, steps, diffusionNorm = 1, lastStepSize = 0.04, draw, progress) {
  const tEnd = 1 - lastStepSize;
  const spacing = steps > 1 ? tEnd / (steps - 1) : 0;
  const ts = [];
  for (let k = 0; k < steps - 1; k++) ts.push(k * spacing);
  ts.push(tEnd);
  const dt = steps > 1 ? ts[1] - ts[0] : 0;
  const dt32 = f32(dt);
  const sqrtDt = f32(Math.sqrt(dt));
  const norm = f32(diffusionNorm);

  async function drift(x, t) {
    const q = f32(t);
    const vel = await v(x, full(t, batch));
    const w = f32(norm * f32(1 - q));
    const d = new Float32Array(x.length);
    for (let j = 0; j < x.length; j++) {
      const score = f32(f32(f32(q * vel[j]) - x[j]) / f32(1 - q));
      d[j] = vel[j] + f32(w * score);
    }
    return { d, w };
  }

  for (let i = 0; i < steps - 1; i++) {
    const { d, w } = await drift(x, ts[i]);
    const noise = draw(x.length);
    const amp = f32(Math.sqrt(f32(2 * w)));
    const next = new Float32Array(x.length);
    for (let j = 0; j < x.length; j++) {
      next[j] = f32(x[j] + f32(d[j] * dt32)) + f32(f32(amp * noise[j]) * sqrtDt);
    }
    x = next;
    progress?.(i + 1, steps, ts[i + 1]);
  }
  if (lastStepSize > 0) {
    const { d } = await drift(x, tEnd);
    const last = f32(lastStepSize);
    const next = new Float32Array(x.length);
    for (let j = 0; j < x.length; j++) next[j] = x[j] + f32(d[j] * last);
    x = next;
  }
  progress?.(steps, steps, 1);
  return x;
}

// ------------------------------------------------------------------------------------------------------------
// Dormand-Prince 5(4)
// ------------------------------------------------------------------------------------------------------------

const C = [1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1];
const A = [
  [1 / 5],
  [3 / 40, 9 / 40],
  [44 / 45, -56 / 15, 32 / 9],
  [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
  [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
  [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84],
].map((row) => row.map(f32));
const E = [35 / 384 - 1951 / 21600, 0, 500 / 1113 - 22642 / 50085, 125 / 192 - 451 / 720,
  -2187 / 6784 - -12231 / 42400, 11 / 84 - 649 / 6300, -1 / 60].map(f32);
const M = [6025192743 / 30085553152 / 2, 0, 51252292925 / 65400821598 / 2, -2691868925 / 45128329728 / 2,
  187940372067 / 1594534317056 / 2, -1776094331 / 19743644256 / 2, 11237099 / 235043384 / 2].map(f32);

/** Root mean square summed in float64, rounded to float32. */
function rms(a) {
  let total = 0;
  for (let i = 0; i < a.length; i++) total += a[i] * a[i];
  return f32(Math.sqrt(total / a.length));
}

function combine(y, ks, coeffs, h32) {
  const total = new Float32Array(y.length);
  for (let i = 0; i < ks.length; i++) {
    if (!coeffs[i]) continue;
    const factor = f32(coeffs[i] * h32);
    const k = ks[i];
    for (let j = 0; j < total.length; j++) total[j] = total[j] + f32(k[j] * factor);
  }
  const out = new Float32Array(y.length);
  for (let j = 0; j < out.length; j++) out[j] = y[j] + total[j];
  return out;
}

function below(value) {
  // the largest float32 below a positive float32
  const buffer = new Float32Array([value]);
  new Uint32Array(buffer.buffer)[0] -= 1;
  return buffer[0];
}

async function initialStep(v, x, f0, batch, atol, rtol) {
  const at = f32(atol);
  const rt = f32(rtol);
  const scale = map(x.length, (j) => at + f32(Math.abs(x[j]) * rt));
  const d0 = rms(map(x.length, (j) => x[j] / scale[j]));
  const d1 = rms(map(x.length, (j) => f0[j] / scale[j]));
  const h0 = d0 < 1e-5 || d1 < 1e-5 ? f32(1e-6) : f32(f32(f32(0.01) * d0) / d1);
  const f1 = await v(map(x.length, (j) => x[j] + f32(h0 * f0[j])), full(h0, batch));
  const d2 = Math.abs(f32(rms(map(x.length, (j) => f32(f1[j] - f0[j]) / scale[j])) / h0));
  const h1 = d1 <= 1e-15 && d2 <= 1e-15 ? Math.max(f32(1e-6), f32(h0 * f32(1e-3)))
    : f32(Math.pow(f32(f32(0.01) / f32(Math.max(d1, d2))), f32(1 / 5)));
  return Math.min(f32(100 * h0), h1);
}

/** Adaptive Dormand-Prince 5(4) from t = 0 to 1. @returns {Promise<Float32Array>} */
export async function dopri5(v, x, batch, atol, rtol, maxSteps = MAX_STEPS, progress) {
  const f0 = await v(x, full(0, batch));
  let dt = await initialStep(v, x, f0, batch, atol, rtol);
  let t0 = 0;
  let t1 = 0;
  let y = x;
  let f = f0;
  let interp = null;
  let accepted = 0;
  const at = f32(atol);
  const rt = f32(rtol);
  let reached = false;
  for (let step = 0; step < maxSteps; step++) {
    if (t1 >= 1) { reached = true; break; }
    const tStart = t1;
    const tEnd = tStart + dt;
    const h32 = f32(dt);
    const ts32 = f32(tStart);
    const te32 = f32(tEnd);
    const ks = [f];
    let yi = y;
    for (let i = 0; i < 6; i++) {
      const ti = C[i] === 1 ? below(te32) : f32(ts32 + f32(f32(C[i]) * h32));
      yi = combine(y, ks, A[i], h32);
      ks.push(await v(yi, full(ti, batch)));
    }
    const yNew = yi;
    const fNew = ks[6];
    const error = combine(new Float32Array(y.length), ks, E, h32);
    const ratio = rms(map(y.length, (j) => error[j] / f32(at + f32(rt * Math.max(Math.abs(y[j]), Math.abs(yNew[j]))))));
    if (ratio <= 1) {
      const yMid = combine(y, ks, M, h32);
      interp = denseOutput(y, yNew, yMid, ks[0], fNew, h32);
      t0 = tStart;
      t1 = tEnd;
      y = yNew;
      f = fNew;
      accepted += 1;
      progress?.(accepted, null, Math.min(t1, 1));
    }
    dt = nextStep(dt, ratio);
  }
  if (!reached && t1 < 1) throw new Error(`dopri5 did not reach t = 1 in ${maxSteps} steps; loosen atol/rtol`);
  const s = f32((1 - t0) / (t1 - t0));
  const [e0, e1, c, b, a] = interp;
  const out = new Float32Array(y.length);
  const s2 = f32(s * s);
  const s3 = f32(s2 * s);
  const s4 = f32(s3 * s);
  for (let j = 0; j < out.length; j++) {
    let total = e0[j] + f32(s * e1[j]);
    total = f32(total + f32(s2 * c[j]));
    total = f32(total + f32(s3 * b[j]));
    out[j] = total + f32(s4 * a[j]);
  }
  return out;
}

function denseOutput(y0, y1, yMid, f0, f1, h32) {
  const n = y0.length;
  const twoH = f32(2 * h32);
  const a = map(n, (j) => f32(f32(f32(twoH * f32(f1[j] - f0[j])) - f32(8 * f32(y1[j] + y0[j]))) + f32(16 * yMid[j])));
  const b = map(n, (j) => f32(f32(f32(f32(h32 * f32(f32(5 * f0[j]) - f32(3 * f1[j]))) + f32(18 * y0[j]))
    + f32(14 * y1[j])) - f32(32 * yMid[j])));
  const c = map(n, (j) => f32(f32(f32(f32(h32 * f32(f1[j] - f32(4 * f0[j]))) - f32(11 * y0[j])) - f32(5 * y1[j]))
    + f32(16 * yMid[j])));
  const e1 = map(n, (j) => h32 * f0[j]);
  return [y0, e1, c, b, a];
}

function nextStep(dt, ratio, safety = 0.9, ifactor = 10, dfactor = 0.2, order = 5) {
  if (ratio === 0) return dt * ifactor;
  if (ratio < 1) dfactor = 1;
  return dt * Math.min(ifactor, Math.max(safety / ratio ** (1 / order), dfactor));
}

// ------------------------------------------------------------------------------------------------------------

/**
 * Run the sampler `settings.method` from noise x (B, N, C) at t = 0 to data at t = 1.
 * @param {Velocity} v
 * @param {Float32Array} x
 * @param {number} batch B
 * @param {SamplerSettings} settings
 * @param {((size: number) => Float32Array)|null} [draw] the sde sampler's noise
 * @param {Progress|null} [progress]
 * @returns {Promise<Float32Array>}
 */
export async function integrate(v, x, batch, settings, draw = null, progress = null) {
  if (SHIFTED.includes(settings.method)) {
    const fixed = { euler, heun, ab2, unipc }[settings.method];
    return fixed(v, x, batch, settings.steps, progress, settings.timeShift, settings.tailCompression);
  }
  if (settings.method === 'dopri5') return dopri5(v, x, batch, settings.atol, settings.rtol, MAX_STEPS, progress);
  return sde(v, x, batch, settings.steps, settings.diffusionNorm, settings.lastStepSize, draw, progress);
}
