/**
 * FiT runtime for JavaScript: one core for Node (onnxruntime-node) and the browser (onnxruntime-web).
 *
 *   import * as ort from 'onnxruntime-web';
 *   import { FitPipeline } from 'fit-runtime';
 *   const pipe = await FitPipeline.load('/package/', { ort });
 *   const { pixels, width, height, parameters } = await pipe.generate({ width: 96, height: 64, label: 'star', seed: 1 });
 *
 * @module fit-runtime
 */

export { FitPipeline, GenerationError, fetchIO, patchify, unpatchify } from './pipeline.js';
export { PackageError, BackendError, validateManifest } from './manifest.js';
export { EXTRAPOLATIONS, EXTRAPOLATION_ALIASES, METHODS, ropeTables, axisFrequencies, attentionScale, resolveMethod,
  canonicalExtrapolation, extrapolationName } from './rope.js';
export { SAMPLERS, MAX_STEPS, MAX_CFG, SettingError, checkSteps, checkCfg } from './sampler.js';
export { normals, checkSeed } from './noise.js';
export { encodePng, textEntries } from './png.js';
export { pyJson, plain } from './params.js';
