// http: a wasi:http/proxy component (exports wasi:http/incoming-handler, no wasi:cli/run), so tests can prove what
// the component runner does when it serves one: a fresh instance per request, headers and streamed bodies in both
// directions, a trap answered 500, per-request limits and timeouts, logs, the outgoing-request grant.
// Built by build.sh with componentize-js (StarlingMonkey, SpiderMonkey), whose bindings import each WIT
// interface as a module namespace.
//
// Routes (PATH is the request's path, QUERY its query string):
//   /stream?bytes=N      200, a body of N bytes (the repeated 64-byte PATTERN below), written in 4096-byte
//                        chunks after the headers went out (chunked transfer: no content-length)
//   /upload              reads the whole request body; 200 `received N bytes fnv1a HEX` (FNV-1a 32 of the body)
//   /trap                throws out of the handler before answering: the instance traps
//   /spin                loops forever without host calls (only a per-request CPU deadline ends it)
//   /sleep?ms=N          prints `sleeping N ms` on stdout, blocks N ms in wasi:io/poll, then 200 `slept N ms`
//   /alloc?mib=N         keeps N 1 MiB buffers, each filled; 200 `allocated N MiB` (or traps when memory runs out)
//   /log                 writes `log: to stdout` to stdout and `log: to stderr` to stderr; 200 `logged`
//   /fetch?to=HOST:PORT  GET http://HOST:PORT/ through wasi:http/outgoing-handler; 200 `fetched STATUS BODY`, or
//                        502 `denied: CODE` / `error: CODE` (CODE a wasi:http error-code name)
//   anything else        200 `method M\npath P\nx-test V\n` (V the request's x-test header, `none` without one),
//                        with response headers `x-path: P` and `x-test-echo: V`
//
// Rules (as in net.js): every resource is disposed explicitly, children before parents (wasmtime traps when a
// parent goes first); nothing is obtained at module top level (componentize-js snapshots the initialised module
// with Wizer, and a handle taken then does not exist at run time); blocking waits are pollable.block().
import * as stdoutApi from "wasi:cli/stdout@0.2.12";
import * as stderrApi from "wasi:cli/stderr@0.2.12";
import * as monotonicClock from "wasi:clocks/monotonic-clock@0.2.12";
import * as types from "wasi:http/types@0.2.12";
import * as outgoingHandler from "wasi:http/outgoing-handler@0.2.12";

const WRITE_CHUNK = 4096; // output-stream.blocking-write-and-flush takes at most 4096 bytes (wasi:io/streams)
const READ_CHUNK = 65536;
const PATTERN = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ+\n"; // 64 bytes

// ---- bytes -----------------------------------------------------------------------------------------------

/** UTF-8 bytes of `text` (QuickJS has no TextEncoder). */
function encode(text) {
    const binary = unescape(encodeURIComponent(text));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
}

/** Text of UTF-8 `bytes`; bytes that are not UTF-8 come out one char per byte. */
function decode(bytes) {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 8192) {
        binary += String.fromCharCode.apply(null, Array.prototype.slice.call(bytes, i, i + 8192));
    }
    try {
        return decodeURIComponent(escape(binary));
    } catch {
        return binary;
    }
}

function writeAll(stream, bytes) {
    for (let at = 0; at < bytes.length; at += WRITE_CHUNK) {
        stream.blockingWriteAndFlush(bytes.subarray(at, at + WRITE_CHUNK));
    }
}

/** The wasi:io stream-error tag or wasi:http error-code tag a thrown binding error carries, else null. */
function errorTag(e) {
    // componentize-js throws a ComponentError carrying the result's error value as `payload`
    if (e === null || typeof e !== "object" || !("payload" in e)) return null;
    const payload = e.payload;
    if (typeof payload === "string") return payload;
    return payload && typeof payload.tag === "string" ? payload.tag : null;
}

// ---- requests --------------------------------------------------------------------------------------------

/** {path, query: Map} of a path-with-query. */
function parseTarget(pathWithQuery) {
    const [path, query = ""] = pathWithQuery.split("?", 2);
    const params = new Map();
    for (const pair of query.split("&")) {
        if (pair === "") continue;
        const [key, value = ""] = pair.split("=", 2);
        params.set(decodeURIComponent(key), decodeURIComponent(value));
    }
    return { path, params };
}

function intParam(params, name) {
    const text = params.get(name) ?? "";
    if (!/^[0-9]{1,12}$/.test(text)) throw new BadRequest(`${name} must be a non-negative integer`);
    return Number(text);
}

class BadRequest extends Error {}

function header(request, name) {
    const fields = request.headers();
    try {
        const values = fields.get(name);
        return values.length > 0 ? decode(values[0]) : null;
    } finally {
        fields[Symbol.dispose]();
    }
}

/** Read the request body to its end, calling `onChunk` for each chunk. */
function readBody(request, onChunk) {
    const body = request.consume();
    const stream = body.stream();
    try {
        for (;;) {
            let chunk;
            try {
                chunk = stream.blockingRead(READ_CHUNK);
            } catch (e) {
                if (errorTag(e) === "closed") break;
                throw e;
            }
            onChunk(chunk);
        }
    } finally {
        stream[Symbol.dispose]();
    }
    types.IncomingBody.finish(body)[Symbol.dispose]();
}

// ---- responses -------------------------------------------------------------------------------------------

/**
 * Send status and headers through `outparam`, then let `writeBody(stream)` write the body (after the headers
 * went out, so a large body streams), then finish it.
 */
function respond(outparam, status, headerList, writeBody) {
    const headers = types.Fields.fromList(headerList.map(([name, value]) => [name, encode(value)]));
    const response = new types.OutgoingResponse(headers);
    response.setStatusCode(status);
    const body = response.body();
    types.ResponseOutparam.set(outparam, { tag: "ok", val: response });
    const stream = body.write();
    try {
        writeBody(stream);
    } finally {
        stream[Symbol.dispose]();
    }
    types.OutgoingBody.finish(body, null);
}

function respondText(outparam, status, text, headerList = []) {
    respond(outparam, status, [["content-type", "text/plain"], ...headerList], (stream) => writeAll(stream, encode(text)));
}

function streamPattern(stream, total) {
    const block = encode(PATTERN.repeat(WRITE_CHUNK / PATTERN.length));
    for (let sent = 0; sent < total; sent += WRITE_CHUNK) {
        stream.blockingWriteAndFlush(total - sent >= WRITE_CHUNK ? block : block.subarray(0, total - sent));
    }
}

function fnv1a(hash, chunk) {
    for (let i = 0; i < chunk.length; i++) {
        hash = Math.imul(hash ^ chunk[i], 16777619) >>> 0;
    }
    return hash;
}

function sleep(ms) {
    const pollable = monotonicClock.subscribeDuration(ms * 1e6);
    try {
        pollable.block();
    } finally {
        pollable[Symbol.dispose]();
    }
}

/** Write `line` to the stream `getStream` returns (wasi:cli stdout or stderr: the container's log). */
function say(getStream, line) {
    const stream = getStream();
    try {
        writeAll(stream, encode(line));
    } finally {
        stream[Symbol.dispose]();
    }
}

/** GET http://AUTHORITY/ through the outgoing handler: [status, body text] or a thrown wasi:http error. */
function fetch(authority) {
    const request = new types.OutgoingRequest(new types.Fields());
    request.setScheme({ tag: "HTTP" });
    request.setAuthority(authority);
    request.setPathWithQuery("/");
    const future = outgoingHandler.handle(request, null);
    try {
        const pollable = future.subscribe();
        try {
            pollable.block();
        } finally {
            pollable[Symbol.dispose]();
        }
        const outcome = future.get(); // option<result<result<incoming-response, error-code>>>: ready now
        if (outcome.tag === "err") throw new Error("the response was already taken");
        if (outcome.val.tag === "err") return [null, outcome.val.val.tag];
        const response = outcome.val.val;
        try {
            const status = response.status();
            const body = response.consume();
            const stream = body.stream();
            const chunks = [];
            try {
                for (;;) {
                    try {
                        chunks.push(decode(stream.blockingRead(READ_CHUNK)));
                    } catch (e) {
                        if (errorTag(e) === "closed") break;
                        throw e;
                    }
                }
            } finally {
                stream[Symbol.dispose]();
            }
            types.IncomingBody.finish(body)[Symbol.dispose]();
            return [status, chunks.join("")];
        } finally {
            response[Symbol.dispose]();
        }
    } finally {
        future[Symbol.dispose]();
    }
}

function route(request, outparam) {
    const method = request.method();
    const pathWithQuery = request.pathWithQuery() ?? "/";
    const { path, params } = parseTarget(pathWithQuery);
    switch (path) {
        case "/stream": {
            const total = intParam(params, "bytes");
            respond(outparam, 200, [["content-type", "application/octet-stream"]], (s) => streamPattern(s, total));
            return;
        }
        case "/upload": {
            let length = 0;
            let hash = 2166136261;
            readBody(request, (chunk) => {
                length += chunk.length;
                hash = fnv1a(hash, chunk);
            });
            respondText(outparam, 200, `received ${length} bytes fnv1a ${hash.toString(16).padStart(8, "0")}\n`);
            return;
        }
        case "/trap":
            throw new Error("trap requested by /trap");
        case "/spin":
            for (;;) {
                // no host calls: only an epoch deadline interrupts this
            }
        case "/sleep": {
            const ms = intParam(params, "ms");
            say(stdoutApi.getStdout, `sleeping ${ms} ms\n`); // tests wait for this line: the request is in flight
            sleep(ms);
            respondText(outparam, 200, `slept ${ms} ms\n`);
            return;
        }
        case "/alloc": {
            const mib = intParam(params, "mib");
            const kept = [];
            while (kept.length < mib) {
                const chunk = new Uint8Array(1024 * 1024);
                chunk.fill(kept.length & 0xff); // touch every page
                kept.push(chunk);
            }
            respondText(outparam, 200, `allocated ${kept.length} MiB\n`);
            return;
        }
        case "/log":
            say(stdoutApi.getStdout, "log: to stdout\n");
            say(stderrApi.getStderr, "log: to stderr\n");
            respondText(outparam, 200, "logged\n");
            return;
        case "/fetch": {
            const [status, text] = fetch(params.get("to") ?? "");
            if (status === null) {
                const denied = text === "HTTP-request-denied";
                respondText(outparam, 502, `${denied ? "denied" : "error"}: ${text}\n`);
            } else {
                respondText(outparam, 200, `fetched ${status} ${text}`);
            }
            return;
        }
        default: {
            const test = header(request, "x-test") ?? "none";
            const name = method.tag === "other" ? method.val : method.tag.toUpperCase();
            respondText(outparam, 200, `method ${name}\npath ${pathWithQuery}\nx-test ${test}\n`, [
                ["x-path", pathWithQuery],
                ["x-test-echo", test],
            ]);
        }
    }
}

export const incomingHandler = {
    handle(request, outparam) {
        try {
            route(request, outparam);
        } catch (e) {
            if (!(e instanceof BadRequest)) throw e; // a trap: the host answers 500
            respondText(outparam, 400, `bad request: ${e.message}\n`);
        } finally {
            request[Symbol.dispose]();
        }
    },
};
