/**
 * 2D rotary position tables and every extrapolation method (docs/runtime-spec.md §4-5).
 * @module rope
 */

import { pyRepr } from './params.js';

const f32 = Math.fround;

export const METHODS = ['normal', 'linear', 'ntk-aware', 'ntk-by-parts', 'yarn', 'ntk-aware-pro1', 'ntk-aware-pro2'];

/** The decoupled extrapolations (FiTv2's VisionNTK, VisionYaRN): canonical name -> official method. */
const DECOUPLED = { 'vision-ntk': 'ntk-aware', 'vision-yarn': 'yarn' };

/** Canonical extrapolation names: each official method (coupled), then the decoupled ones. */
export const EXTRAPOLATIONS = [...METHODS, ...Object.keys(DECOUPLED)];

/** Other spellings accepted for them (lower case) -> canonical name. */
export const EXTRAPOLATION_ALIASES = {
  none: 'normal',
  pi: 'linear',
  ntk: 'ntk-aware',
  'ntk-parts': 'ntk-by-parts',
  'ntk-pro1': 'ntk-aware-pro1',
  'ntk-pro2': 'ntk-aware-pro2',
  visionntk: 'vision-ntk',
  visionyarn: 'vision-yarn',
};

/**
 * @typedef {object} RopeSettings
 * @property {number} headDim
 * @property {number} theta
 * @property {string} method
 * @property {boolean} decouple
 * @property {number|null} oriMaxPeLen
 */

/**
 * The canonical extrapolation name of `name` (an alias or a canonical name in any case); RangeError otherwise.
 * @param {string} name
 */
export function canonicalExtrapolation(name) {
  let key = String(name).trim().toLowerCase();
  key = EXTRAPOLATION_ALIASES[key] ?? key;
  if (!EXTRAPOLATIONS.includes(key)) {
    throw new RangeError(`unknown RoPE method ${pyRepr(name)}; choose one of ${EXTRAPOLATIONS.join(', ')}`);
  }
  return key;
}

/**
 * [official method, decouple] of an extrapolation name: official names are coupled, vision-* decoupled.
 * @param {string} name
 * @returns {[string, boolean]}
 */
export function resolveMethod(name) {
  const key = canonicalExtrapolation(name);
  return Object.hasOwn(DECOUPLED, key) ? [DECOUPLED[key], true] : [key, false];
}

/**
 * The extrapolation name of settings' method and decouple (the inverse of {@link resolveMethod}); a decoupled
 * method without a canonical name is `METHOD+decouple`.
 * @param {RopeSettings} settings
 */
export function extrapolationName(settings) {
  if (!settings.decouple) return settings.method;
  const named = Object.keys(DECOUPLED).find((key) => DECOUPLED[key] === settings.method);
  return named ?? `${settings.method}+decouple`;
}

/**
 * Settings with the extrapolation `name` (canonical or alias), which sets method and decouple.
 * @param {RopeSettings} base
 * @param {string} name
 * @param {number} trainSide
 * @returns {RopeSettings}
 */
export function withMethod(base, name, trainSide) {
  const [method, decouple] = resolveMethod(name);
  return { ...base, method, decouple, oriMaxPeLen: trainSide || base.oriMaxPeLen };
}

function correctionRange(lowRot, highRot, dim, base, maxLen) {
  const factor = (rot) => (dim * Math.log(maxLen / (rot * 2 * Math.PI))) / (2 * Math.log(base));
  return [Math.max(Math.floor(factor(lowRot)), 0), Math.min(Math.ceil(factor(highRot)), dim - 1)];
}

function ramp(low, high, k) {
  if (low === high) high += 0.001;
  const value = f32(f32(k - low) / f32(high - low));
  return Math.min(Math.max(value, 0), 1);
}

/**
 * Frequencies (Float64Array of float32 values, length headDim/4) of one axis of length `len`.
 * @param {RopeSettings} settings
 * @param {number} len
 */
export function axisFrequencies(settings, len) {
  const dim = settings.headDim / 2;
  const count = dim / 2;
  const theta = f32(settings.theta);
  const out = new Float64Array(count);
  const method = settings.method;
  const ori = settings.oriMaxPeLen;
  const s = method === 'normal' ? 1 : Math.max(f32(f32(len) / f32(ori)), 1);
  const ntkTheta = f32(theta * f32(Math.pow(s, f32(dim / (dim - 2)))));
  const parts = method === 'ntk-by-parts'
    ? [correctionRange(1.25, 0.75, dim, settings.theta, ori), correctionRange(16, 2, dim, settings.theta, ori)] : null;
  const yarnRange = method === 'yarn' ? correctionRange(32, 1, dim, settings.theta, ori) : null;
  for (let k = 0; k < count; k++) {
    const e = f32(f32(2 * k) / f32(dim));
    const power = f32(Math.pow(theta, e));
    const base = f32(1 / power);
    const linear = f32(1 / f32(s * power));
    const ntk = f32(1 / f32(Math.pow(ntkTheta, e)));
    let freq;
    if (method === 'normal') freq = base;
    else if (method === 'linear') freq = linear;
    else if (method.startsWith('ntk-aware')) freq = ntk;
    else if (method === 'ntk-by-parts') {
      let beta = f32(1 - ramp(parts[0][0], parts[0][1], k));
      const mixed = f32(f32(linear * f32(1 - beta)) + f32(ntk * beta));
      beta = f32(1 - ramp(parts[1][0], parts[1][1], k));
      freq = f32(f32(mixed * f32(1 - beta)) + f32(base * beta));
    } else if (method === 'yarn') {
      const beta = f32(1 - ramp(yarnRange[0], yarnRange[1], k));
      freq = f32(f32(linear * f32(1 - beta)) + f32(base * beta));
    } else throw new RangeError(`unknown RoPE method ${pyRepr(method)}`);
    out[k] = freq;
  }
  return out;
}

function proportion(lTest, lTrain) {
  const l2 = lTest * 2;
  if (f32(l2 / lTrain) <= 1) return 1;
  return f32(Math.sqrt(f32(f32(Math.log(f32(l2))) / f32(Math.log(lTrain)))));
}

/**
 * Factor both tables are multiplied by (YaRN mscale, pro1/pro2 proportions); 1 for the other methods.
 * @param {RopeSettings} settings
 * @param {number} h
 * @param {number} w
 */
export function attentionScale(settings, h, w) {
  const ori = settings.oriMaxPeLen;
  if (settings.method === 'yarn') {
    const s = Math.max(f32(f32(Math.max(h, w)) / f32(ori)), 1);
    return s <= 1 ? 1 : f32(f32(f32(0.1) * f32(Math.log(s))) + 1);
  }
  if (settings.method === 'ntk-aware-pro1') return proportion(Math.max(h, w), ori);
  if (settings.method === 'ntk-aware-pro2') return proportion(h * w, ori * ori);
  return 1;
}

/**
 * cos and sin tables (h*w, headDim) of an h x w patch grid.
 * @param {RopeSettings} settings
 * @param {number} h
 * @param {number} w
 * @returns {{cos: Float32Array, sin: Float32Array, freqsH: Float64Array, freqsW: Float64Array, scale: number}}
 */
export function ropeTables(settings, h, w) {
  const [lenH, lenW] = settings.decouple ? [h, w] : [Math.max(h, w), Math.max(h, w)];
  const freqsH = axisFrequencies(settings, lenH);
  const freqsW = axisFrequencies(settings, lenW);
  const scale = attentionScale(settings, h, w);
  const D = settings.headDim;
  const F = D / 4;
  const half = D / 2;
  const cos = new Float32Array(h * w * D);
  const sin = new Float32Array(h * w * D);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const row = (r * w + c) * D;
      for (let k = 0; k < F; k++) {
        const a = f32(r * freqsH[k]);
        const b = f32(c * freqsW[k]);
        const ca = f32(f32(Math.cos(a)) * scale);
        const sa = f32(f32(Math.sin(a)) * scale);
        const cb = f32(f32(Math.cos(b)) * scale);
        const sb = f32(f32(Math.sin(b)) * scale);
        cos[row + 2 * k] = cos[row + 2 * k + 1] = ca;
        sin[row + 2 * k] = sin[row + 2 * k + 1] = sa;
        cos[row + half + 2 * k] = cos[row + half + 2 * k + 1] = cb;
        sin[row + half + 2 * k] = sin[row + half + 2 * k + 1] = sb;
      }
    }
  }
  return { cos, sin, freqsH, freqsW, scale };
}
