// The page's state in the URL's fragment (never sent to the server): the example's name while it is unchanged,
// else the whole request body, deflated and base64url-encoded; the selected entry; the hidden layer; the digits.
//   #example=two_layer_sigmoid_bce&sel=dZ2:0,2
//   #net=z<base64url of deflate-raw(JSON)>&sel=e:dZ2_chain_rule:0,1&hidden=1&digits=6

const b64url = bytes => {
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
};
const unb64url = text => {
  const s = atob(text.replace(/-/g, '+').replace(/_/g, '/'));
  return Uint8Array.from(s, c => c.charCodeAt(0));
};

async function through(stream, bytes) {
  const out = new Response(new Blob([bytes]).stream().pipeThrough(stream));
  return new Uint8Array(await out.arrayBuffer());
}

async function pack(body) {
  const bytes = new TextEncoder().encode(JSON.stringify(body));
  if (typeof CompressionStream === 'function') return 'z' + b64url(await through(new CompressionStream('deflate-raw'), bytes));
  return 'j' + b64url(bytes);
}

async function unpack(text) {
  const bytes = unb64url(text.slice(1));
  const raw = text[0] === 'z' ? await through(new DecompressionStream('deflate-raw'), bytes) : bytes;
  return JSON.parse(new TextDecoder().decode(raw));
}

export async function encodeState({example, body, selection, hidden, digits}) {
  const p = new URLSearchParams();
  if (example) p.set('example', example);
  else p.set('net', await pack(body));
  if (selection) p.set('sel', `${selection.source === 'explain' ? 'e:' : ''}${selection.name}:${selection.idx.join(',')}`);
  if (hidden) p.set('hidden', String(hidden));
  if (digits && digits !== 4) p.set('digits', String(digits));
  return '#' + p.toString();
}

// The state a fragment holds; a part that cannot be read is left out (the page then starts from its default).
export async function decodeState(hash) {
  const p = new URLSearchParams(hash.replace(/^#/, ''));
  const out = {};
  if (p.get('example')) out.example = p.get('example');
  if (p.get('net')) {
    try { out.body = await unpack(p.get('net')); } catch (err) { out.broken = 'the network in this link cannot be read'; }
  }
  const sel = /^(e:)?([A-Za-z_]\w*):([\d,]*)$/.exec(p.get('sel') || '');
  if (sel) out.selection = {source: sel[1] ? 'explain' : 'model', name: sel[2],
                            idx: sel[3] === '' ? [] : sel[3].split(',').map(Number)};
  if (/^\d+$/.test(p.get('hidden') || '')) out.hidden = Number(p.get('hidden'));
  if (['4', '6', '17'].includes(p.get('digits'))) out.digits = Number(p.get('digits'));
  return out;
}
