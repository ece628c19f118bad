/**
 * Portable Gaussian noise (docs/runtime-spec.md §3): SplitMix64 words, Box-Muller in float64, rounded to float32.
 * @module noise
 */

import { pyRepr } from './params.js';

const MASK = (1n << 64n) - 1n;
const GAMMA = 0x9E3779B97F4A7C15n;
const M1 = 0xBF58476D1CE4E5B9n;
const M2 = 0x94D049BB133111EBn;
export const SEED_LIMIT = 1n << 64n;
export const BLOCK = 1n << 32n;
const TWO_POW_M53 = 2 ** -53;

/**
 * The seed as a BigInt; throws unless it is a whole number with 0 <= seed < 2**64.
 * @param {number|bigint|string} seed
 * @returns {bigint}
 */
export function checkSeed(seed) {
  let value;
  if (typeof seed === 'bigint') value = seed;
  else if (typeof seed === 'number' && Number.isInteger(seed)) value = BigInt(seed);
  else if (typeof seed === 'string' && /^\s*[-+]?\d+\s*$/.test(seed)) value = BigInt(seed.trim());
  if (value === undefined || value < 0n || value >= SEED_LIMIT) {
    throw new RangeError(`seed must be a whole number from 0 to 2**64 - 1, got ${value ?? pyRepr(seed)}`);
  }
  return value;
}

/**
 * Word k of the stream of `seed`.
 * @param {bigint} seed
 * @param {bigint} k
 */
export function word(seed, k) {
  let z = (seed + (k + 1n) * GAMMA) & MASK;
  z = ((z ^ (z >> 30n)) * M1) & MASK;
  z = ((z ^ (z >> 27n)) * M2) & MASK;
  return z ^ (z >> 31n);
}

/**
 * `count` float32 standard normals of block `block` of the stream of `seed`.
 * @param {number|bigint} seed
 * @param {number} count
 * @param {number} [block]
 * @param {Float32Array} [out] written from index 0
 * @returns {Float32Array}
 */
export function normals(seed, count, block = 0, out = new Float32Array(count)) {
  const s = checkSeed(seed);
  let k = BigInt(block) * BLOCK;
  for (let j = 0; j < count; j += 2) {
    const a = word(s, k);
    const c = word(s, k + 1n);
    k += 2n;
    const u1 = (Number(a >> 11n) + 1) * TWO_POW_M53;
    const u2 = Number(c >> 11n) * TWO_POW_M53;
    const r = Math.sqrt(-2 * Math.log(u1));
    const angle = 2 * Math.PI * u2;
    out[j] = r * Math.cos(angle);
    if (j + 1 < count) out[j + 1] = r * Math.sin(angle);
  }
  return out;
}

/**
 * draw(size) for the sde sampler of a padded batch (B, N, dim), flattened, whose row i holds `lengths[i]` tokens of
 * a request seeded `seeds[i]`: call s (s = 0, 1, ...) gives row i block s + 1 of its seed's stream as
 * (lengths[i], dim) row-major, zeros on padding (docs/runtime-spec.md §3).
 * @param {(number|bigint)[]} seeds
 * @param {number[]} lengths
 * @param {number} dim
 * @returns {(size: number) => Float32Array}
 */
export function sdeDraw(seeds, lengths, dim) {
  let calls = 0;
  return (size) => {
    calls += 1;
    const out = new Float32Array(size);
    const row = size / seeds.length;
    seeds.forEach((seed, i) => normals(seed, lengths[i] * dim, calls, out.subarray(i * row)));
    return out;
  };
}
