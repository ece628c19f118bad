/**
 * Generation parameters as PNG text (docs/runtime-spec.md §10): Python-compatible float text and JSON.
 * @module params
 */

/** A float the way Python's repr writes it: shortest round-trip digits, `.0` on whole numbers. */
export function pyFloat(x) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  if (x === 0) return Object.is(x, -0) ? '-0.0' : '0.0';
  const [mantissa, e] = x.toExponential().split('e');
  const power = Number(e);
  if (power < -4 || power >= 16) {
    return `${mantissa}e${power < 0 ? '-' : '+'}${String(Math.abs(power)).padStart(2, '0')}`;
  }
  const text = x.toFixed(Math.max(0, mantissa.replace('-', '').replace('.', '').length - 1 - power));
  return text.includes('.') ? text : `${text}.0`;
}

/** @typedef {{float: number}} PyFloat a number that is written as a Python float */

/** Mark a number as a float for {@link pyJson}. */
export const asFloat = (x) => ({ float: x });

function scalar(value) {
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'bigint') return value.toString();
  if (typeof value === 'number') return String(value);
  if (typeof value === 'boolean') return value ? 'true' : 'false';
  if (typeof value === 'object' && 'float' in value) return pyFloat(value.float);
  throw new TypeError(`cannot write ${typeof value}`);
}

function jsonString(text) {
  let out = '"';
  for (const ch of text) {
    const code = ch.codePointAt(0);
    if (ch === '"') out += '\\"';
    else if (ch === '\\') out += '\\\\';
    else if (ch === '\n') out += '\\n';
    else if (ch === '\r') out += '\\r';
    else if (ch === '\t') out += '\\t';
    else if (ch === '\b') out += '\\b';
    else if (ch === '\f') out += '\\f';
    else if (code < 0x20 || code > 0x7e) {
      for (let i = 0; i < ch.length; i++) out += `\\u${ch.charCodeAt(i).toString(16).padStart(4, '0')}`;
    } else out += ch;
  }
  return `${out}"`;
}

/** JSON as Python's json.dumps(value, sort_keys=True) writes it. */
export function pyJson(value) {
  if (typeof value === 'string') return jsonString(value);
  if (Array.isArray(value)) return `[${value.map(pyJson).join(', ')}]`;
  if (value && typeof value === 'object' && !('float' in value)) {
    const keys = Object.keys(value).sort();
    return `{${keys.map((k) => `${jsonString(k)}: ${pyJson(value[k])}`).join(', ')}}`;
  }
  return scalar(value);
}

/** Plain JSON-able copy (floats as numbers, big seeds as strings when unsafe). */
export function plain(value) {
  if (Array.isArray(value)) return value.map(plain);
  if (typeof value === 'bigint') return Number.isSafeInteger(Number(value)) ? Number(value) : value.toString();
  if (value && typeof value === 'object') {
    if ('float' in value) return value.float;
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
  }
  return value;
}

/** Python's repr of a value for messages: numbers as ints or floats ({float} always a float), strings quoted. */
export function pyRepr(value) {
  if (typeof value === 'number' && !Number.isInteger(value)) return pyFloat(value);
  return pyReprValue(value);
}

/** Python's str() of a parameter value (nested lists and dicts as Python writes them). */
export function pyStr(value) {
  if (typeof value === 'string') return value;
  return pyReprValue(value);
}

function pyReprValue(value) {
  if (value === null || value === undefined) return 'None';
  if (typeof value === 'boolean') return value ? 'True' : 'False';
  if (typeof value === 'string') return value.includes("'") && !value.includes('"') ? `"${value}"` : `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
  if (Array.isArray(value)) return `[${value.map(pyReprValue).join(', ')}]`;
  if (typeof value === 'object' && !('float' in value)) {
    return `{${Object.entries(value).map(([k, v]) => `'${k}': ${pyReprValue(v)}`).join(', ')}}`;
  }
  return scalar(value);
}
