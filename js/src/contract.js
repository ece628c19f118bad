/**
 * The graph contracts of a package (engines/contract.py) — the transformer's and the VAE decoder's: input and output
 * names, dtypes, shapes, the feed of one call, and the transformer's padded batch (docs/runtime-spec.md §6). The
 * transformer's names and precisions come from the schema generated from the Python definitions.
 * @module contract
 */

import { PackageError } from './errors.js';
import { SCHEMA } from './manifest-schema.js';
import { pyRepr, pyStr, pyTuple, pyTypeName } from './params.js';
import { ropeTables } from './rope.js';

/** The precisions a graph's activations (x, v) come in. */
export const { PRECISIONS } = SCHEMA.constants;

/** Name, dtype (numpy name) and shape of one graph input or output; dynamic axes are names ("batch", "seq"). */
export class TensorSpec {
  /**
   * @param {string} name
   * @param {string} dtype
   * @param {(number|string)[]} shape
   */
  constructor(name, dtype, shape) {
    this.name = name;
    this.dtype = dtype;
    this.shape = shape;
  }

  /** A tensor of a manifest's `inputs`/`outputs` list; PackageError names what is wrong. */
  static fromDict(data, source = 'tensor') {
    if (pyTypeName(data) !== 'dict' || typeof data.name !== 'string') {
      throw new PackageError(`${source}: a tensor needs a name`);
    }
    const shape = Object.hasOwn(data, 'shape') ? data.shape : [];
    if (!Array.isArray(shape)) throw new PackageError(`${source}: tensor ${pyRepr(data.name)} has no shape list`);
    return new TensorSpec(data.name, Object.hasOwn(data, 'dtype') ? pyStr(data.dtype) : 'float32', [...shape]);
  }
}

/**
 * What every graph contract derives from its `inputs` and `outputs` (TensorSpecs): names and feeds
 * (engines.contract._Contract). Subclasses set the static INPUT_NAMES, OUTPUT_NAMES and TITLE (how messages name
 * the contract).
 */
class Contract {
  /** Throw PackageError unless a graph's input and output names are the contract's, in order. */
  static checkNames(inputs, outputs, source) {
    const same = (a, b) => a.length === b.length && a.every((name, i) => name === b[i]);
    if (!same(inputs, this.INPUT_NAMES) || !same(outputs, this.OUTPUT_NAMES)) {
      throw new PackageError(`${source}: inputs/outputs ${pyTuple(inputs)} -> ${pyTuple(outputs)} do not follow the `
        + `${this.TITLE} ${pyTuple(this.INPUT_NAMES)} -> ${pyTuple(this.OUTPUT_NAMES)}`);
    }
  }

  /**
   * The contract's inputs in order: name -> {dtype, data, dims}. `arrays` holds every input (float16 ones as float32
   * values: the backend converts them; int64 ones as a BigInt64Array); `sizes` the length of each dynamic axis by
   * name ({batch: 2, seq: 24}).
   * @param {Record<string, Float32Array|BigInt64Array>} arrays
   * @param {Record<string, number>} sizes
   */
  feed(arrays, sizes) {
    const names = this.constructor.INPUT_NAMES;
    const missing = names.filter((name) => !Object.hasOwn(arrays, name));
    const unexpected = Object.keys(arrays).filter((name) => !names.includes(name));
    if (missing.length || unexpected.length) {
      throw new Error(`${this.constructor.TITLE} feed: missing ${pyRepr(missing)}, unexpected ${pyRepr(unexpected)}`);
    }
    return Object.fromEntries(this.inputs.map((spec) => [spec.name,
      { dtype: spec.dtype, data: arrays[spec.name], dims: spec.shape.map((d) => sizes[d] ?? d) }]));
  }
}

// ------------------------------------------------------------------------------------------------------------
// The transformer
// ------------------------------------------------------------------------------------------------------------

/**
 * The transformer graph every package ships: x (batch, seq, token_dim) -> v (batch, seq, out_token_dim), conditioned
 * on t (batch,), y (batch,) int64, rope_cos / rope_sin (batch, seq, head_dim) and mask (batch, seq). `x` and `v`
 * are float16 in fp16 packages; every other input is float32 (y int64) at every precision.
 */
export class GraphContract extends Contract {
  static INPUT_NAMES = SCHEMA.constants.INPUT_NAMES;
  static OUTPUT_NAMES = SCHEMA.constants.OUTPUT_NAMES;
  static TITLE = 'graph contract';
  static BATCH = SCHEMA.constants.BATCH;
  static SEQ = SCHEMA.constants.SEQ;

  /**
   * @param {number} tokenDim
   * @param {number} outTokenDim
   * @param {number} headDim
   * @param {string} [precision]
   */
  constructor(tokenDim, outTokenDim, headDim, precision = 'fp32') {
    super();
    if (!PRECISIONS.includes(precision)) {
      throw new PackageError(`unknown precision ${pyRepr(precision)}; choose one of ${PRECISIONS.join(', ')}`);
    }
    this.tokenDim = tokenDim;
    this.outTokenDim = outTokenDim;
    this.headDim = headDim;
    this.precision = precision;
  }

  /** The dtype of `x` and `v`. */
  get activationDtype() {
    return this.precision === 'fp16' ? 'float16' : 'float32';
  }

  /** @returns {TensorSpec[]} */
  get inputs() {
    const { BATCH: b, SEQ: n } = GraphContract;
    const act = this.activationDtype;
    return [new TensorSpec('x', act, [b, n, this.tokenDim]), new TensorSpec('t', 'float32', [b]),
      new TensorSpec('y', 'int64', [b]), new TensorSpec('rope_cos', 'float32', [b, n, this.headDim]),
      new TensorSpec('rope_sin', 'float32', [b, n, this.headDim]), new TensorSpec('mask', 'float32', [b, n])];
  }

  /** @returns {TensorSpec[]} */
  get outputs() {
    return [new TensorSpec('v', this.activationDtype, [GraphContract.BATCH, GraphContract.SEQ, this.outTokenDim])];
  }

  /**
   * Rows of [h, w] patch grids as one padded batch (docs/runtime-spec.md §6), ready to feed.
   *
   * rope: one RopeSettings for every row or an array of one per row (each row's tables are those of its own grid);
   * labels: (B,) class ids (`nullClass` for an unconditional row); tokens: per row (h·w, token_dim), e.g.
   * `patchify(noise, ...)` (default zeros); nullClass: given, every call runs [cond; uncond] halves for
   * classifier-free guidance (2B graph rows, the second half labelled `nullClass`).
   * @param {[number, number][]} grids
   * @param {import('./rope.js').RopeSettings|import('./rope.js').RopeSettings[]} rope
   * @param {number[]} labels
   * @param {Float32Array[]|null} [tokens]
   * @param {number|null} [nullClass]
   * @returns {PaddedBatch}
   */
  paddedBatch(grids, rope, labels, tokens = null, nullClass = null) {
    if (!grids.length || grids.some(([h, w]) => !(h >= 1 && w >= 1))) {
      throw new RangeError(`a padded batch needs one or more grids of at least 1x1 patches, got `
        + `[${grids.map(pyTuple).join(', ')}]`);
    }
    const perRow = Array.isArray(rope) ? rope : grids.map(() => rope);
    if (perRow.length !== grids.length || labels.length !== grids.length) {
      throw new RangeError(`${grids.length} grids need as many labels and RoPE settings, got ${labels.length} labels `
        + `and ${perRow.length} settings`);
    }
    const b = grids.length;
    const n = Math.max(...grids.map(([h, w]) => h * w));
    const { tokenDim: dim, headDim: D } = this;
    const x = new Float32Array(b * n * dim);
    const mask = new Float32Array(b * n);
    const cos = new Float32Array(b * n * D);
    const sin = new Float32Array(b * n * D);
    grids.forEach(([h, w], i) => {
      if (tokens) x.set(tokens[i], i * n * dim);
      mask.fill(1, i * n, i * n + h * w);
      const tables = ropeTables(perRow[i], h, w);
      cos.set(tables.cos, i * n * D);
      sin.set(tables.sin, i * n * D);
    });
    const y = BigInt64Array.from(labels, (label) => BigInt(label));
    const guided = nullClass !== null;
    const conditioning = guided
      ? { y: twice(y, BigInt64Array.from(labels, () => BigInt(nullClass))), rope_cos: twice(cos), rope_sin: twice(sin),
        mask: twice(mask) }
      : { y, rope_cos: cos, rope_sin: sin, mask };
    return new PaddedBatch(this, grids.map(([h, w]) => [h, w]), x, conditioning, guided);
  }
}

/**
 * Rows of different patch grids as one graph batch of N = the longest row's tokens: row i holds its h·w tokens
 * (row-major), then zeros; mask 1 on real tokens, 0 on padding; RoPE tables of the row's own grid, zeros on
 * padding. Made by {@link GraphContract#paddedBatch}.
 */
export class PaddedBatch {
  /**
   * @param {GraphContract} contract
   * @param {[number, number][]} grids [h, w] patch grid of each row
   * @param {Float32Array} x (B, N, token_dim): each row's tokens, then zeros
   * @param {Record<string, Float32Array|BigInt64Array>} conditioning y, rope_cos, rope_sin, mask: the same in every
   *   call; 2B rows when guided
   * @param {boolean} guided every call runs [cond; uncond] halves
   */
  constructor(contract, grids, x, conditioning, guided) {
    Object.assign(this, { contract, grids, x, conditioning, guided });
    Object.freeze(this);
  }

  /** Real tokens of each row. */
  get lengths() {
    return this.grids.map(([h, w]) => h * w);
  }

  /**
   * The graph feed for the state `x` (B, N, token_dim) (default: the batch's tokens) at times `t` (B,), in the
   * contract's dtypes; guided: x and t doubled into [cond; uncond] halves.
   * @param {ArrayLike<number>} t
   * @param {Float32Array|null} [x]
   */
  feed(t, x = null) {
    const state = x ?? this.x;
    const times = Float32Array.from(t);
    const rows = this.grids.length * (this.guided ? 2 : 1);
    return this.contract.feed({ x: this.guided ? twice(state) : state, t: this.guided ? twice(times) : times,
      ...this.conditioning }, { [GraphContract.BATCH]: rows, [GraphContract.SEQ]: Math.max(...this.lengths) });
  }

  /** Each row's latent (C, h·p, w·p) from a state (B, N, token_dim). */
  unpack(x, patchSize) {
    const dim = this.contract.tokenDim;
    const n = Math.max(...this.lengths);
    return this.grids.map(([h, w], i) => unpatchify(x.subarray(i * n * dim, (i * n + h * w) * dim), h, w, patchSize));
  }
}

/** A typed array followed by `second` (default: itself), e.g. the cond and uncond halves of a guided call. */
function twice(first, second = first) {
  const out = new first.constructor(first.length * 2);
  out.set(first);
  out.set(second, first.length);
  return out;
}

// ------------------------------------------------------------------------------------------------------------
// Tokens <-> latents
// ------------------------------------------------------------------------------------------------------------

/** (C, H, W) -> (H/p * W/p, C*p*p): row-major tokens, channel order (c, p1, p2). */
export function patchify(latent, channels, height, width, p) {
  const h = height / p;
  const w = width / p;
  const dim = channels * p * p;
  const out = new Float32Array(h * w * dim);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const token = (r * w + c) * dim;
      for (let ch = 0; ch < channels; ch++) {
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            out[token + ch * p * p + i * p + j] = latent[(ch * height + r * p + i) * width + c * p + j];
          }
        }
      }
    }
  }
  return out;
}

/** (h*w, C*p*p) tokens of an h x w patch grid -> (C, h*p, w*p). */
export function unpatchify(tokens, h, w, p) {
  const channels = tokens.length / (h * w * p * p);
  const height = h * p;
  const width = w * p;
  const dim = channels * p * p;
  const out = new Float32Array(channels * height * width);
  for (let r = 0; r < h; r++) {
    for (let c = 0; c < w; c++) {
      const token = (r * w + c) * dim;
      for (let ch = 0; ch < channels; ch++) {
        for (let i = 0; i < p; i++) {
          for (let j = 0; j < p; j++) {
            out[(ch * height + r * p + i) * width + c * p + j] = tokens[token + ch * p * p + i * p + j];
          }
        }
      }
    }
  }
  return out;
}

// ------------------------------------------------------------------------------------------------------------
// The VAE decoder
// ------------------------------------------------------------------------------------------------------------

/**
 * The VAE decoder graph a package may ship: latent (batch, C, height, width) float32 -> image (batch, 3, d·height,
 * d·width) float32, RGB in about [-1, 1]; d = `latent.downsample`.
 */
export class VaeDecoderContract extends Contract {
  static INPUT_NAMES = ['latent'];
  static OUTPUT_NAMES = ['image'];
  static TITLE = 'VAE decoder contract';
  static IMAGE_CHANNELS = 3;
  static BATCH = GraphContract.BATCH;
  static HEIGHT = 'height';
  static WIDTH = 'width';

  /**
   * @param {number} latentChannels
   * @param {number} downsample
   */
  constructor(latentChannels, downsample) {
    super();
    this.latentChannels = latentChannels;
    this.downsample = downsample;
  }

  /** @returns {TensorSpec[]} */
  get inputs() {
    const { BATCH, HEIGHT, WIDTH } = VaeDecoderContract;
    return [new TensorSpec('latent', 'float32', [BATCH, this.latentChannels, HEIGHT, WIDTH])];
  }

  /** @returns {TensorSpec[]} */
  get outputs() {
    const { BATCH, IMAGE_CHANNELS, HEIGHT, WIDTH } = VaeDecoderContract;
    const d = this.downsample;
    return [new TensorSpec('image', 'float32', [BATCH, IMAGE_CHANNELS, `${d}*${HEIGHT}`, `${d}*${WIDTH}`])];
  }
}
