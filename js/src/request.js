/**
 * What one generation call asks for, and the types its checks produce (engines/request.py, docs/runtime-spec.md §2).
 *
 * A request is checked once, by {@link import('./pipeline.js').FitPipeline#prepare}, into {@link Job} objects (a
 * checked {@link Request} plus its resolved {@link GenerationSettings}); generation takes jobs and never checks
 * again. node fit-run, the web page and embedding apps only translate their input into `prepare`'s arguments and
 * render its {@link GenerationError} (parameter -> flag or field, hint -> the option that fixes it).
 * @module request
 */

import { formatG, pyRepr, pyTypeName } from './params.js';
import { MAX_CFG, MAX_STEPS, SettingError } from './sampler.js';

/**
 * A request the package cannot serve (size off the grid or too large, unknown class, bad settings).
 *
 * `parameter`: the request parameter at fault (`width`, `cfg`, ...) when one is; the message then starts with its
 * name, which a command line replaces with its flag. `mentions`: other parameters the message names, each as
 * `NAME VALUE`. `hint`: the name of an option that would make the request valid (`snap` for a size off the pixel
 * grid); a front end that has that option adds it to the message.
 */
export class GenerationError extends SettingError {
  /**
   * @param {string} message
   * @param {string|null} [parameter]
   * @param {{hint?: string|null, mentions?: string[]}} [details]
   */
  constructor(message, parameter = null, { hint = null, mentions = [] } = {}) {
    super(message, parameter);
    this.name = 'GenerationError';
    this.hint = hint;
    this.mentions = Object.freeze([...mentions]);
  }
}

/**
 * The largest step count and guidance scale a request may ask for, and the largest cost of one of its images
 * ({@link imageCost}; null: no limit). The engine's own limits are the defaults (MAX_STEPS, MAX_CFG of sampler.js;
 * no cost limit); a server may set lower ones as its policy, and its refusals then read exactly as the engine's,
 * with its numbers.
 */
export class Limits {
  /**
   * @param {number} [maxSteps] a whole number from 1 to MAX_STEPS
   * @param {number} [maxCfg] a number from 0 to MAX_CFG
   * @param {number|null} [maxCost] a whole number of at least 1, or null
   */
  constructor(maxSteps = MAX_STEPS, maxCfg = MAX_CFG, maxCost = null) {
    if (pyTypeName(maxSteps) !== 'int' || !(maxSteps >= 1 && maxSteps <= MAX_STEPS)) {
      throw new RangeError(`max_steps must be a whole number from 1 to ${MAX_STEPS.toLocaleString('en-US')}, got `
        + `${pyRepr(maxSteps)}`);
    }
    if (typeof maxCfg !== 'number' || !(maxCfg >= 0 && maxCfg <= MAX_CFG)) {
      throw new RangeError(`max_cfg must be a number from 0 to ${formatG(MAX_CFG)}, got ${pyRepr(maxCfg)}`);
    }
    if (maxCost !== null && (pyTypeName(maxCost) !== 'int' || !(maxCost >= 1))) {
      throw new RangeError(`max_cost must be a whole number of at least 1 or null, got ${pyRepr(maxCost)}`);
    }
    this.maxSteps = Number(maxSteps);
    this.maxCfg = maxCfg;
    this.maxCost = maxCost === null ? null : Number(maxCost);
    Object.freeze(this);
  }
}

/** The engine's own limits. */
export const ENGINE_LIMITS = new Limits();

/** One image: pixel size, class id (null = unconditional) and the seed of its initial noise. */
export class Request {
  /**
   * @param {number} width
   * @param {number} height
   * @param {number|null} label
   * @param {bigint} seed
   */
  constructor(width, height, label, seed) {
    Object.assign(this, { width, height, label, seed });
    Object.freeze(this);
  }
}

/**
 * Everything besides the request that decides an image, resolved once from the request and the package defaults
 * ({@link import('./pipeline.js').FitPipeline#settings}); it drives the sampler and is what the PNG metadata
 * records.
 */
export class GenerationSettings {
  /**
   * @param {import('./sampler.js').SamplerSettings} sampler
   * @param {number} cfg
   * @param {string} extrapolation canonical name of the RoPE method used
   * @param {import('./rope.js').RopeSettings} rope
   * @param {number} [scalePow]
   */
  constructor(sampler, cfg, extrapolation, rope, scalePow = 0) {
    Object.assign(this, { sampler, cfg, extrapolation, rope, scalePow });
    Object.freeze(this);
  }

  /** Whether the network runs cond and uncond halves (classifier-free guidance on). */
  get guided() {
    return this.cfg !== 1;
  }

  /**
   * Requests whose settings share this key can share one step loop (and so one padded batch): same integrator,
   * steps, time grid and tolerances, guidance on or off. Scale and extrapolation may differ per row.
   */
  loopKey() {
    const s = this.sampler;
    return [s.method, s.steps, s.atol, s.rtol, s.timeShift, s.tailCompression, this.guided, this.scalePow].join();
  }
}

/**
 * One image to generate: a checked request (size on the grid, class id resolved, seed in range) and its settings.
 * Made by {@link import('./pipeline.js').FitPipeline#prepare}; what generation, batching and the PNG metadata take.
 */
export class Job {
  /**
   * @param {Request} request
   * @param {GenerationSettings} settings
   */
  constructor(request, settings) {
    Object.assign(this, { request, settings });
    Object.freeze(this);
  }
}

/**
 * The jobs of one checked request, made on access (so `num` may be any size): image `i` (0-based) has the size,
 * class `labels[i % labels.length]` and seed `seed + i`, all with the same settings. A sequence like an array:
 * `length`, `at(i)` (negative counts from the end; RangeError outside), `slice(start, end)` and iteration.
 */
export class Jobs {
  /**
   * @param {number} width
   * @param {number} height
   * @param {(number|null)[]} labels
   * @param {bigint} seed
   * @param {number} num
   * @param {GenerationSettings} settings
   */
  constructor(width, height, labels, seed, num, settings) {
    Object.assign(this, { width, height, labels: Object.freeze([...labels]), seed, num, settings });
    Object.freeze(this);
  }

  get length() {
    return this.num;
  }

  /** @returns {Job} */
  at(index) {
    const i = index < 0 ? index + this.num : index;
    if (!Number.isInteger(i) || i < 0 || i >= this.num) throw new RangeError(`job ${index} of ${this.num}`);
    const request = new Request(this.width, this.height, this.labels[i % this.labels.length], this.seed + BigInt(i));
    return new Job(request, this.settings);
  }

  /** Jobs `start` .. `end` - 1 as an array (negative indices count from the end; out of range is clamped). */
  slice(start = 0, end = this.num) {
    const index = (i) => (i < 0 ? Math.max(0, i + this.num) : Math.min(i, this.num));
    const jobs = [];
    for (let i = index(start); i < index(end); i++) jobs.push(this.at(i));
    return jobs;
  }

  *[Symbol.iterator]() {
    for (let i = 0; i < this.num; i++) yield this.at(i);
  }
}

/**
 * Network evaluations of one sampling loop, at most: the fixed-step samplers' own count (euler, ab2, unipc, sde:
 * steps; heun: 2 x steps); dopri5's worst case under the step limit it runs with (MAX_STEPS, sampler.js dopri5): 2
 * (the first velocity and the initial step size), then 6 per attempted step, accepted or rejected.
 * @param {import('./sampler.js').SamplerSettings} sampler
 * @returns {number}
 */
export function maxEvaluations(sampler) {
  if (sampler.method === 'dopri5') return 2 + 6 * MAX_STEPS;
  return sampler.method === 'heun' ? 2 * sampler.steps : sampler.steps;
}

/**
 * The network work of one image, in token evaluations: {@link maxEvaluations} x its tokens ((W/g) x (H/g) for the
 * pixel granularity g), x 2 when the network runs the cond and uncond halves (guidance on and `conditional`: a
 * class given). Batching and padding are left out: the cost of a request is its own.
 * @param {number} tokens
 * @param {GenerationSettings} settings
 * @param {boolean} conditional
 * @returns {number}
 */
export function imageCost(tokens, settings, conditional) {
  return maxEvaluations(settings.sampler) * tokens * (settings.guided && conditional ? 2 : 1);
}

/**
 * GenerationError when an image costs more than `limits.maxCost` ({@link imageCost}).
 * @param {number} tokens
 * @param {GenerationSettings} settings
 * @param {boolean} conditional
 * @param {Limits} limits
 */
export function checkCost(tokens, settings, conditional, limits) {
  if (limits.maxCost === null) return;
  const cost = imageCost(tokens, settings, conditional);
  if (cost > limits.maxCost) {
    const n = (value) => value.toLocaleString('en-US');
    const bound = settings.sampler.method === 'dopri5' ? ' at most (dopri5)' : '';
    const halves = settings.guided && conditional ? ' x 2 (guidance)' : '';
    throw new GenerationError(`this request costs ${n(cost)} (${n(maxEvaluations(settings.sampler))} network `
      + `evaluations${bound} x ${tokens} tokens${halves}), more than the limit of ${n(limits.maxCost)}; ask for fewer `
      + 'steps, a smaller size or another sampler');
  }
}
