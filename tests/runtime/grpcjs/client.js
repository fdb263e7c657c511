// Node's @grpc/grpc-js against the runtime's V2 gRPC service; prints what it saw as JSON.
// node client.js HOST:PORT PROTO MODEL KEY BIG_ROWS  (tests/runtime/test_grpc_interop.py)
'use strict';
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [target, protoPath, model, key, bigRows] = process.argv.slice(2);
const pkg = grpc.loadPackageDefinition(
  loader.loadSync(protoPath, {keepCase: true, longs: String, defaults: true})).inference;

// grpc-js's own trace (GRPC_TRACE=keepalive,transport) is counted: keepalive PINGs
// answered, and any connection lost or GOAWAY received
const trace = {pings: 0, closed: [], goaway: []};
grpc.setLogVerbosity(grpc.logVerbosity.DEBUG);
grpc.setLogger({error: (...args) => {
  const line = args.join(' ');
  if (line.includes('Received ping response')) trace.pings++;
  if (/connection closed/.test(line)) trace.closed.push(line);
  if (/GOAWAY/i.test(line)) trace.goaway.push(line);
}});

const options = {
  'grpc.max_receive_message_length': 64 << 20,
  'grpc.max_send_message_length': 64 << 20,
  'grpc.keepalive_time_ms': 100,
  'grpc.keepalive_timeout_ms': 20000,
  'grpc.keepalive_permit_without_calls': 1,
};

function metadata(k) {
  const m = new grpc.Metadata();
  if (k) m.set('x-api-key', k);
  return m;
}

function call(client, name, request, opts = {}, k = key) {
  return new Promise((resolve) => {
    const c = client[name](request, metadata(k), opts.call || {}, (err, reply) =>
      resolve(err ? {code: err.code, details: err.details} : {reply}));
    if (opts.cancel) setImmediate(() => c.cancel());
  });
}

// the rows Python regenerates: row r, feature f = ((r * 8 + f) * 7919 % 1000) / 100 - 5
function rows(n) {
  const v = new Array(n * 8);
  for (let i = 0; i < v.length; i++) v[i] = ((i * 7919) % 1000) / 100 - 5;
  return v;
}

function infer(n) {
  return {model_name: model,
          inputs: [{name: 'input-0', datatype: 'FP64', shape: [n, 8],
                    contents: {fp64_contents: rows(n)}}]};
}

function summary(r) {
  if (!r.reply) return r;
  const out = {};
  for (const o of r.reply.outputs) {
    const values = o.datatype === 'INT64' ? o.contents.int64_contents.map(Number)
      : o.contents.fp64_contents;
    // labels: their sum; probabilities: the sum of the second column's
    const counted = o.datatype === 'INT64' ? values : values.filter((_, i) => i % 2 === 1);
    out[o.name] = {shape: o.shape.map(Number), sum: counted.reduce((a, b) => a + b, 0)};
  }
  return out;
}

async function until(check, what, seconds = 60) {
  const end = Date.now() + seconds * 1000;
  while (!check()) {
    if (Date.now() > end) throw new Error(`not within ${seconds} s: ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function main() {
  const out = {};
  const client = new pkg.GRPCInferenceService(target, grpc.credentials.createInsecure(), options);
  out.live = await call(client, 'ServerLive', {});
  out.ready = await call(client, 'ServerReady', {});
  out.metadata = await call(client, 'ModelMetadata', {name: model});
  out.no_key = await call(client, 'ModelMetadata', {name: model}, {}, null);
  out.unknown = await new Promise((resolve) => client.makeUnaryRequest(
    '/inference.GRPCInferenceService/NoSuchMethod', (x) => x, (x) => x, Buffer.alloc(0),
    metadata(key), {}, (err) => resolve(err ? {code: err.code, details: err.details} : {})));
  out.small = summary(await call(client, 'ModelInfer', infer(3)));
  const n = Number(bigRows);
  const request = infer(n);
  out.big = summary(await call(client, 'ModelInfer', request,
                               {call: {deadline: Date.now() + 120000}}));
  const many = await Promise.all(Array.from({length: 300}, (_, i) =>
    call(client, 'ModelInfer', infer(1 + (i % 4)))));
  out.many = {ok: many.filter((r) => r.reply).length,
              sums: many.map((r) => summary(r).predict_proba?.sum ?? null)};
  out.deadline = await call(client, 'ModelInfer', request, {call: {deadline: Date.now() + 1}});
  out.cancelled = await call(client, 'ModelInfer', request, {cancel: true});
  // keepalive PINGs every 100 ms while idle: the connection must outlive 10 of them
  const before = trace.pings;
  await until(() => trace.pings >= before + 10, '10 keepalive PINGs answered');
  out.after_pings = await call(client, 'ServerLive', {});
  out.pings = trace.pings;
  out.closed = [...trace.closed];
  out.goaway = [...trace.goaway];
  // gzip-compressed requests, on a channel (and connection) of their own
  const gz = new pkg.GRPCInferenceService(target, grpc.credentials.createInsecure(), {
    ...options, 'grpc.default_compression_algorithm': 2, 'grpc.use_local_subchannel_pool': 1});
  out.gzip = summary(await call(gz, 'ModelInfer', infer(5000)));
  gz.close();
  client.close();
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { console.error(e); process.exit(1); });
