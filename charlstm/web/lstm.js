// charlstm's LSTM in JavaScript: one character at a time, the math of charlstm/api.py.
//
//   z = x @ W_x + h @ W_h + b            gate blocks i, f, g, o (each H wide)
//   c = sigmoid(z_f) * c + sigmoid(z_i) * tanh(z_g);   h = sigmoid(z_o) * tanh(c)
//   logits = h_top @ W_y + b_y
//
// Weights arrive as one little-endian float32 or float16 buffer (base64) with a table
// of [offset, shape] per tensor; matrices are row-major (D, 4H), as in charlstm.
// Arithmetic is in doubles on float32 storage. Runs in a page and under node (the
// exporter's self-check requires this file and calls the same functions).
"use strict";

function base64ToBytes(text) {
  if (typeof atob === "function") {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let k = 0; k < binary.length; k++) bytes[k] = binary.charCodeAt(k);
    return bytes;
  }
  return new Uint8Array(Buffer.from(text, "base64"));
}

function halfToFloat(bits) {
  const sign = bits & 0x8000 ? -1 : 1;
  const exponent = (bits >> 10) & 0x1f;
  const fraction = bits & 0x3ff;
  if (exponent === 0) return sign * fraction * Math.pow(2, -24);  // subnormal
  if (exponent === 31) return fraction ? NaN : sign * Infinity;
  return sign * (1 + fraction / 1024) * Math.pow(2, exponent - 15);
}

function decodeTensors(model) {
  const bytes = base64ToBytes(model.data);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const width = model.dtype === "float16" ? 2 : 4;
  const tensors = {};
  for (const [name, [offset, shape]] of Object.entries(model.tensors)) {
    const size = shape.reduce((a, b) => a * b, 1);
    const values = new Float32Array(size);
    for (let k = 0; k < size; k++) {
      const at = (offset + k) * width;
      values[k] = width === 2 ? halfToFloat(view.getUint16(at, true)) : view.getFloat32(at, true);
    }
    tensors[name] = values;
  }
  return tensors;
}

function sigmoid(z) { return 0.5 * Math.tanh(0.5 * z) + 0.5; }

function createLstm(model) {
  const w = decodeTensors(model);
  const H = model.hidden_size, V = model.vocab_size, L = model.num_layers, G = 4 * H;
  const h = [], c = [];
  const z = new Float64Array(G);
  const logits = new Float64Array(V);

  function reset() {  // the model's initial state, (L, H) each
    h.length = 0; c.length = 0;
    for (let k = 0; k < L; k++) {
      h.push(Float64Array.from(w["init.h"].subarray(k * H, (k + 1) * H)));
      c.push(Float64Array.from(w["init.c"].subarray(k * H, (k + 1) * H)));
    }
  }

  function addProduct(x, W) {  // z += x @ W, W (len(x), 4H) row-major
    for (let d = 0; d < x.length; d++) {
      const xd = x[d];
      if (xd === 0) continue;
      const row = d * G;
      for (let j = 0; j < G; j++) z[j] += xd * W[row + j];
    }
  }

  function step(id) {  // read one character id; return the next character's logits (V)
    let x = null;
    for (let k = 0; k < L; k++) {
      const W_x = w[`lstm.${k}.W_x`], b = w[`lstm.${k}.b`];
      for (let j = 0; j < G; j++) z[j] = b[j];
      if (k === 0) {
        for (let j = 0; j < G; j++) z[j] += W_x[id * G + j];  // one-hot input: a row
      } else {
        addProduct(x, W_x);
      }
      addProduct(h[k], w[`lstm.${k}.W_h`]);
      const hk = h[k], ck = c[k];
      for (let j = 0; j < H; j++) {
        ck[j] = sigmoid(z[H + j]) * ck[j] + sigmoid(z[j]) * Math.tanh(z[2 * H + j]);
        hk[j] = sigmoid(z[3 * H + j]) * Math.tanh(ck[j]);
      }
      x = hk;
    }
    const W_y = w["head.W_y"], b_y = w["head.b_y"];
    for (let v = 0; v < V; v++) logits[v] = b_y[v];
    for (let d = 0; d < H; d++) {
      const xd = x[d];
      for (let v = 0; v < V; v++) logits[v] += xd * W_y[d * V + v];
    }
    return logits;
  }

  reset();
  return { reset, step, chars: Array.from(model.chars) };  // Array.from: one entry per code point
}

// A small seeded generator (mulberry32): the same seed gives the same text in the
// page; it is not NumPy's generator, so only --argmax text matches `charlstm sample`.
function seededRandom(seed) {
  let a = seed >>> 0;
  return function () {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function pickNext(logits, temperature, argmax, random) {
  let best = 0;
  for (let v = 1; v < logits.length; v++) if (logits[v] > logits[best]) best = v;  // first of ties, as NumPy
  if (argmax) return best;
  const probs = new Float64Array(logits.length);
  let total = 0;
  for (let v = 0; v < logits.length; v++) {
    probs[v] = Math.exp((logits[v] - logits[best]) / temperature);
    total += probs[v];
  }
  let u = random() * total;
  for (let v = 0; v < logits.length; v++) {
    u -= probs[v];
    if (u < 0) return v;
  }
  return logits.length - 1;
}

if (typeof module !== "undefined") module.exports = { createLstm, pickNext, seededRandom };
