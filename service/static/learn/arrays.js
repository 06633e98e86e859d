// Arrays on the page: small ones as tables, larger ones as heatmaps, every entry inspectable by mouse, touch and
// keyboard; and the parser of arrays pasted from a notebook (JSON, or numpy's printed form).

export const TABLE_MAX_ENTRIES = 120;
export const TABLE_MAX_COLUMNS = 16;

// A value (number, list or list of lists) as a grid. ``column``: show a 1-D list as a column (b-shaped).
// idx(r, c) is the entry's index in the value itself: [] for a number, [i] for a list, [r, c] for a matrix.
export function grid(value, column = false) {
  if (!Array.isArray(value)) return {rows: 1, cols: 1, get: () => value, idx: () => [], shape: []};
  if (!Array.isArray(value[0]) && value.length >= 0 && !value.some(Array.isArray)) {
    const n = value.length;
    return column
      ? {rows: n, cols: 1, get: r => value[r], idx: r => [r], shape: [n]}
      : {rows: 1, cols: n, get: (r, c) => value[c], idx: (r, c) => [c], shape: [n]};
  }
  const shape = shapeOfValue(value);
  if (shape.length >= 3) return blocks(value, shape);
  const rows = value.length, cols = rows ? value[0].length : 0;
  return {rows, cols, get: (r, c) => value[r][c], idx: (r, c) => [r, c], shape: [rows, cols]};
}

export function shapeOfValue(value) {
  const shape = [];
  for (let v = value; Array.isArray(v); v = v[0]) shape.push(v.length);
  return shape;
}

// An array of rank 3 or more (an image batch, a conv kernel) as numpy prints it: one row per index of all the
// axes but the last (labelled by that index), the last axis across.
function blocks(value, shape) {
  const lead = shape.slice(0, -1), cols = shape[shape.length - 1];
  const rows = lead.reduce((a, b) => a * b, 1);
  const unravel = r => {
    const out = new Array(lead.length);
    for (let k = lead.length - 1; k >= 0; k--) { out[k] = r % lead[k]; r = Math.floor(r / lead[k]); }
    return out;
  };
  const at = idx => idx.reduce((o, i) => o?.[i], value);
  return {rows, cols, shape, get: (r, c) => at([...unravel(r), c]), idx: (r, c) => [...unravel(r), c],
          rowLabel: r => unravel(r).join(','),
          rc: idx => [idx.slice(0, -1).reduce((acc, i, k) => acc * lead[k] + i, 0), idx[idx.length - 1]]};
}

export const shapeText = shape => (shape.length ? shape.join(' × ') : 'a number');

function sameShape(a, b) {
  return a && b && a.rows === b.rows && a.cols === b.cols;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children) if (c) node.append(c);
  return node;
}
export {el};

// One array, drawn. spec: {name, value, column, editable, prev (the value before the last change, or null),
// fmt(v), caption (text after the name), axes ({rows, cols} words), inspect(name, idx, value, node, how),
// edit(name, idx, text, input), selected (an idx to highlight)}. Returns the element.
export function renderArray(spec) {
  const g = grid(spec.value, spec.column);
  const prev = spec.prev === undefined || spec.prev === null ? null : grid(spec.prev, spec.column);
  const compare = sameShape(g, prev) ? prev : null;
  const figure = el('figure', {class: 'array', 'data-array': spec.name});
  const cap = el('figcaption', {},
                 el('span', {class: 'name', text: spec.name}),
                 el('span', {class: 'shape', text: ` ${shapeText(g.shape)}`}),
                 spec.caption ? el('span', {class: 'cap', text: ` ${spec.caption}`}) : null);
  figure.append(cap);
  const table = g.rows * g.cols <= TABLE_MAX_ENTRIES && g.cols <= TABLE_MAX_COLUMNS;
  const changed = table ? renderTable(figure, spec, g, compare) : renderHeatmap(figure, spec, g, compare);
  if (changed) {
    figure.classList.add('has-changes');
    cap.append(el('span', {class: 'changes', text: ` ${changed} changed`}));
  }
  return figure;
}

function changedAt(g, compare, r, c) {
  if (!compare) return false;
  return !Object.is(g.get(r, c), compare.get(r, c));
}

function renderTable(figure, spec, g, compare) {
  const axes = spec.axes || {};
  const table = el('table', {class: 'grid', role: spec.editable ? null : 'grid',
                             'aria-label': `${spec.name}, ${shapeText(g.shape)}` +
                                           (axes.rows ? `, rows: ${axes.rows}, columns: ${axes.cols}` : '')});
  let changed = 0;
  if (g.shape.length) {
    const head = el('tr', {}, el('td', {class: 'corner', 'aria-hidden': 'true'}));
    for (let c = 0; c < g.cols; c++) head.append(el('th', {scope: 'col', text: g.shape.length >= 2 || g.rows === 1 ? String(c) : ''}));
    table.append(el('thead', {}, head));
  }
  const body = el('tbody');
  let first = true;
  for (let r = 0; r < g.rows; r++) {
    const tr = el('tr');
    if (g.shape.length) tr.append(el('th', {scope: 'row', text: g.rowLabel ? g.rowLabel(r) :
                                                g.shape.length === 2 || g.cols === 1 ? String(r) : ''}));
    for (let c = 0; c < g.cols; c++) {
      const v = g.get(r, c), idx = g.idx(r, c);
      const label = `${spec.name}[${idx.join(',')}]`;
      const isChanged = changedAt(g, compare, r, c);
      if (isChanged) changed++;
      const selected = spec.selected && spec.selected.join(',') === idx.join(',');
      const cls = ['cell', isChanged && 'changed', v === null && 'null', selected && 'selected',
                   typeof v === 'number' && v < 0 && 'neg'].filter(Boolean).join(' ');
      let td;
      if (spec.editable) {
        const input = el('input', {type: 'text', inputmode: 'decimal', value: String(v), 'aria-label': label,
                                   'data-idx': idx.join(','), spellcheck: 'false', autocomplete: 'off',
                                   size: String(Math.max(4, Math.min(8, String(v).length)))});
        td = el('td', {class: cls + ' editable', 'data-idx': idx.join(','), 'data-value': String(v)}, input);
      } else {
        td = el('td', {class: cls, 'data-idx': idx.join(','), 'data-value': v === null ? 'null' : String(v),
                       tabindex: first ? '0' : '-1', role: 'gridcell',
                       'aria-label': `${label} = ${spec.fmt(v)}${isChanged ? ', changed' : ''}`,
                       text: spec.fmt(v)});
        first = false;
      }
      tr.append(td);
    }
    body.append(tr);
  }
  table.append(body);
  wireTable(table, spec, g);
  figure.append(el('div', {class: 'scroll', role: 'region', tabindex: '-1',
                           'aria-label': `${spec.name} table`}, table));
  return changed;
}

const parseIdx = s => (s === '' ? [] : s.split(',').map(Number));

function entryOf(spec, g, td) {
  const idx = parseIdx(td.dataset.idx);
  const raw = td.dataset.value;
  const value = raw === 'null' ? null : Number(raw);
  return {idx, value};
}

function wireTable(table, spec, g) {
  const cells = () => [...table.querySelectorAll('td.cell')];
  const fire = (td, how) => {
    const {idx, value} = entryOf(spec, g, td);
    spec.inspect(spec.name, idx, value, td, how);
  };
  table.addEventListener('mouseover', ev => {
    const td = ev.target.closest('td.cell');
    if (td) fire(td, 'hover');
  });
  table.addEventListener('focusin', ev => {
    const td = ev.target.closest('td.cell');
    if (td) fire(td, 'focus');
  });
  table.addEventListener('click', ev => {
    const td = ev.target.closest('td.cell');
    if (td && !spec.editable) fire(td, 'pin');
  });
  table.addEventListener('keydown', ev => {
    const td = ev.target.closest('td.cell');
    if (!td) return;
    const all = cells(), i = all.indexOf(td);
    const cols = g.cols;
    const moves = {ArrowRight: 1, ArrowLeft: -1, ArrowDown: cols, ArrowUp: -cols, Home: -(i % cols),
                   End: cols - 1 - (i % cols)};
    if (spec.editable) {
      if (ev.key === 'ArrowDown' || ev.key === 'ArrowUp') {
        const next = all[i + moves[ev.key]];
        if (next) { ev.preventDefault(); next.querySelector('input').focus(); }
      }
      return;
    }
    if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); fire(td, 'pin'); return; }
    if (!(ev.key in moves)) return;
    const next = all[i + moves[ev.key]];
    if (!next) return;
    ev.preventDefault();
    td.tabIndex = -1;
    next.tabIndex = 0;
    next.focus();
  });
  if (spec.editable) {
    table.addEventListener('change', ev => {
      const input = ev.target.closest('input');
      if (input) spec.edit(spec.name, parseIdx(input.dataset.idx), input.value, input);
    });
    table.addEventListener('keydown', ev => {
      if (ev.key === 'Enter' && ev.target.matches('input')) {
        ev.preventDefault();
        ev.target.dispatchEvent(new Event('change', {bubbles: true}));
      }
    });
  }
}

// Diverging colours: negative blue, positive red, 0 white, scaled by the largest magnitude.
function colour(v, scale) {
  if (v === null || !Number.isFinite(v)) return [150, 150, 150];
  const t = scale ? Math.max(-1, Math.min(1, v / scale)) : 0;
  const w = 255 * (1 - Math.abs(t));
  return t >= 0 ? [255, w, w] : [w, w + (255 - w) * 0.25, 255];
}

function renderHeatmap(figure, spec, g, compare) {
  let scale = 0, changed = 0;
  for (let r = 0; r < g.rows; r++) {
    for (let c = 0; c < g.cols; c++) {
      const v = g.get(r, c);
      if (v !== null && Number.isFinite(v)) scale = Math.max(scale, Math.abs(v));
      if (changedAt(g, compare, r, c)) changed++;
    }
  }
  const canvas = el('canvas', {width: String(g.cols), height: String(g.rows), tabindex: '0', role: 'img',
                               class: 'heatmap',
                               'aria-label': `${spec.name}, ${shapeText(g.shape)}, heatmap; largest magnitude ` +
                                             `${spec.fmt(scale)}. Arrow keys move through its entries.`});
  const ctx2d = canvas.getContext('2d');
  const img = ctx2d.createImageData(g.cols, g.rows);
  for (let r = 0; r < g.rows; r++) {
    for (let c = 0; c < g.cols; c++) {
      const [R, G, B] = colour(g.get(r, c), scale);
      const o = 4 * (r * g.cols + c);
      img.data.set([R, G, B, 255], o);
    }
  }
  ctx2d.putImageData(img, 0, 0);
  // Each entry a square of 3 to 14 px, the whole at most 640 px wide (CSS caps it at the figure's width).
  const cell = Math.max(3, Math.min(14, Math.floor(640 / g.cols)));
  canvas.style.width = `${g.cols * cell}px`;
  canvas.style.aspectRatio = `${g.cols} / ${g.rows}`;
  const cursor = el('div', {class: 'cursor', 'aria-hidden': 'true'});
  const wrap = el('div', {class: 'heatwrap'}, canvas, cursor);
  let at = spec.selected && spec.selected.length ? rcOf(g, spec.selected) : [0, 0];
  const show = how => {
    const [r, c] = at;
    cursor.style.left = `${(100 * c) / g.cols}%`;
    cursor.style.top = `${(100 * r) / g.rows}%`;
    cursor.style.width = `${100 / g.cols}%`;
    cursor.style.height = `${100 / g.rows}%`;
    cursor.hidden = false;
    spec.inspect(spec.name, g.idx(r, c), g.get(r, c), canvas, how);
  };
  cursor.hidden = !(spec.selected && spec.selected.length);
  if (!cursor.hidden) requestAnimationFrame(() => show('restore'));
  const fromEvent = ev => {
    const rect = canvas.getBoundingClientRect();
    const c = Math.min(g.cols - 1, Math.max(0, Math.floor(((ev.clientX - rect.left) / rect.width) * g.cols)));
    const r = Math.min(g.rows - 1, Math.max(0, Math.floor(((ev.clientY - rect.top) / rect.height) * g.rows)));
    return [r, c];
  };
  canvas.addEventListener('mousemove', ev => { at = fromEvent(ev); show('hover'); });
  canvas.addEventListener('click', ev => { at = fromEvent(ev); show('pin'); });
  canvas.addEventListener('focus', () => show('focus'));
  canvas.addEventListener('keydown', ev => {
    const d = {ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0]}[ev.key];
    if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); show('pin'); return; }
    if (!d) return;
    ev.preventDefault();
    at = [Math.min(g.rows - 1, Math.max(0, at[0] + d[0])), Math.min(g.cols - 1, Math.max(0, at[1] + d[1]))];
    show('focus');
  });
  const legend = el('p', {class: 'legend'},
                     el('span', {class: 'swatch neg', 'aria-hidden': 'true'}), ` -${spec.fmt(scale)} `,
                     el('span', {class: 'swatch zero', 'aria-hidden': 'true'}), ' 0 ',
                     el('span', {class: 'swatch pos', 'aria-hidden': 'true'}), ` ${spec.fmt(scale)}` +
                     (spec.editable ? '. Select an entry to edit it.' : ''));
  figure.append(wrap, legend);
  return changed;
}

function rcOf(g, idx) {
  if (g.rc && idx.length === g.shape.length) return g.rc(idx);
  if (idx.length === 2) return [idx[0], idx[1]];
  if (idx.length === 1) return g.rows === 1 ? [0, idx[0]] : [idx[0], 0];
  return [0, 0];
}

// --- pasted arrays ---------------------------------------------------------------------------------------

const TOKEN = /\[|\]|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf(?:inity)?)\b|null|None/gi;

// One array or number from text: JSON, or numpy's printed form ("[[ 0.1 -0.2]\n [ 0.3  0.4]]", with or without
// "array(...)" and commas). Throws an Error that says what is wrong.
export function parseArray(text) {
  const cleaned = text.replace(/array\s*\(/g, '').replace(/,?\s*dtype\s*=\s*[\w.]+\s*\)?/g, '')
                      .replace(/\)\s*$/, '');
  const tokens = cleaned.match(TOKEN) || [];
  const leftover = cleaned.replace(TOKEN, '').replace(/[\s,]/g, '');
  if (leftover) throw new Error(`cannot read "${leftover.slice(0, 20)}" as part of an array`);
  if (!tokens.length) throw new Error('no number found');
  const num = t => {
    const s = t.toLowerCase();
    if (s === 'null' || s === 'none') return null;
    if (s.includes('nan') || s.includes('inf')) throw new Error(`${t} is not a finite number`);
    return Number(t);
  };
  if (tokens[0] !== '[') {
    if (tokens.length !== 1) throw new Error('several numbers outside brackets');
    return num(tokens[0]);
  }
  const stack = [[]];
  for (const t of tokens) {
    if (t === '[') stack.push([]);
    else if (t === ']') {
      if (stack.length < 2) throw new Error('a "]" with no "[" before it');
      const done = stack.pop();
      stack[stack.length - 1].push(done);
    } else stack[stack.length - 1].push(num(t));
  }
  if (stack.length !== 1 || stack[0].length !== 1) throw new Error('brackets do not match');
  return stack[0][0];
}

// A submission from text: a JSON object {"dW1": [[...]], ...}, or assignments "dW1 = [[...]]" one after the
// other (each value as parseArray reads it). Returns {key: value}.
export function parseSubmission(text) {
  const trimmed = text.trim();
  if (!trimmed) throw new Error('paste at least one array, e.g. dW1 = [[0.05, -0.04], ...]');
  if (trimmed.startsWith('{')) {
    let obj;
    try { obj = JSON.parse(trimmed); } catch (err) { throw new Error(`not valid JSON: ${err.message}`); }
    if (!obj || typeof obj !== 'object' || Array.isArray(obj)) throw new Error('expected an object of arrays');
    return obj;
  }
  const parts = trimmed.split(/(?:^|\n|;)\s*([A-Za-z_]\w*)\s*=(?!=)/);
  if (parts[0].trim()) throw new Error(`start with a name, e.g. "dW1 = ..." (found "${parts[0].trim().slice(0, 20)}")`);
  const out = {};
  for (let i = 1; i < parts.length; i += 2) {
    const key = parts[i];
    try { out[key] = parseArray(parts[i + 1]); } catch (err) { throw new Error(`${key}: ${err.message}`); }
  }
  return out;
}
