/**
 * The errors of the runtime that are not about one request (engines/errors.py): a package it cannot use, a backend
 * it cannot run. Request errors (GenerationError) are in request.js.
 * @module errors
 */

/** A model package is missing, unreadable, of an unknown version or does not match its hashes. */
export class PackageError extends Error {
  constructor(message) { super(message); this.name = 'PackageError'; }
}

/** ONNX Runtime cannot load or run a graph. The message says what to do. */
export class BackendError extends Error {
  constructor(message) { super(message); this.name = 'BackendError'; }
}

/** The first line of an error's message: what a one-line message quotes of a parser's or ONNX Runtime's error. */
export function firstLine(err) {
  return String(err?.message ?? err).trim().split('\n')[0];
}
