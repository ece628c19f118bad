/**
 * The transformer graph contract (engines/contract.py): input and output names, dtypes, shapes and the feed of one
 * call. Names and precisions come from the schema generated from the Python definitions.
 * @module contract
 */

import { PackageError } from './errors.js';
import { SCHEMA } from './manifest-schema.js';
import { pyRepr, pyStr, pyTuple, pyTypeName } from './params.js';

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
 * The transformer graph every package ships: x (batch, seq, token_dim) -> v (batch, seq, out_token_dim), conditioned
 * on t (batch,), y (batch,) int64, rope_cos / rope_sin (batch, seq, head_dim) and mask (batch, seq). `x` and `v`
 * are float16 in fp16 packages; every other input is float32 (y int64) at every precision.
 */
export class GraphContract {
  static INPUT_NAMES = SCHEMA.constants.INPUT_NAMES;
  static OUTPUT_NAMES = SCHEMA.constants.OUTPUT_NAMES;
  static BATCH = SCHEMA.constants.BATCH;
  static SEQ = SCHEMA.constants.SEQ;

  /**
   * @param {number} tokenDim
   * @param {number} outTokenDim
   * @param {number} headDim
   * @param {string} [precision]
   */
  constructor(tokenDim, outTokenDim, headDim, precision = 'fp32') {
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

  /** Concrete input shapes (name -> dims) for a (batch, seq) call. */
  shapes(batch, seq) {
    const sizes = { [GraphContract.BATCH]: batch, [GraphContract.SEQ]: seq };
    return Object.fromEntries(this.inputs.map((spec) => [spec.name, spec.shape.map((d) => sizes[d] ?? d)]));
  }

  /** Throw PackageError unless a graph's input and output names are the contract's, in order. */
  static checkNames(inputs, outputs, source) {
    const same = (a, b) => a.length === b.length && a.every((name, i) => name === b[i]);
    if (!same(inputs, GraphContract.INPUT_NAMES) || !same(outputs, GraphContract.OUTPUT_NAMES)) {
      throw new PackageError(`${source}: inputs/outputs ${pyTuple(inputs)} -> ${pyTuple(outputs)} do not follow the `
        + `graph contract ${pyTuple(GraphContract.INPUT_NAMES)} -> ${pyTuple(GraphContract.OUTPUT_NAMES)}`);
    }
  }

  /**
   * The contract's inputs in order for a (batch, seq) call: name -> {dtype, data, dims}. `arrays` holds every input
   * (x as float32 values; the backend converts it to the activation dtype, y as a BigInt64Array).
   * @param {Record<string, Float32Array|BigInt64Array>} arrays
   * @param {number} batch
   * @param {number} seq
   */
  feed(arrays, batch, seq) {
    const missing = GraphContract.INPUT_NAMES.filter((name) => !Object.hasOwn(arrays, name));
    const unexpected = Object.keys(arrays).filter((name) => !GraphContract.INPUT_NAMES.includes(name));
    if (missing.length || unexpected.length) {
      throw new Error(`graph feed: missing ${pyRepr(missing)}, unexpected ${pyRepr(unexpected)}`);
    }
    const shapes = this.shapes(batch, seq);
    return Object.fromEntries(this.inputs.map((spec) => [spec.name,
      { dtype: spec.dtype, data: arrays[spec.name], dims: shapes[spec.name] }]));
  }
}
