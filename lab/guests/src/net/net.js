// net: a wasi:cli command component that uses wasi:sockets 0.2, so tests can prove each part of a network grant
// (annotation wasm.shim.io/network) and each denial. Built by build.sh with componentize-qjs (QuickJS).
//
// Usage (argv[0] is the program name, as ctr passes it); one action per run:
//   listen ADDR PORT [COUNT]   bind + listen, print `listening ADDR:PORT`, then COUNT times (default 1, 0 = forever)
//                              accept a client, send it `hello from wasm\n`, close it, print `served`
//   connect ADDR PORT          connect, print `connected`, read to EOF, print `received TEXT` (one trailing
//                              newline removed)
//   udp-send ADDR PORT TEXT    bind the wildcard address of ADDR's family on port 0, send TEXT as one datagram to
//                              ADDR:PORT, print `sent`
//   udp-echo ADDR PORT         bind ADDR:PORT, print `bound ADDR:PORT`, receive one datagram, print `got TEXT`
//   create                     create an IPv4 TCP socket, print `created`
//   alloc MAX_MIB [fail]       (not a socket action: the memory limit in the component runner) keep 1 MiB
//                              buffers, each filled, printing `N MiB` after each, until MAX_MIB (`reached N MiB`)
//                              or an allocation fails (`allocation failed at N MiB`; with `fail` the command then
//                              ends with status 1, as a program that cannot go on without that memory)
// ADDR is an IPv4 dotted quad or an IPv6 address (`::1`, `::`, `fd00::5`, `::ffff:10.0.0.1`, optionally in
// brackets); it is printed as given, PORT as actually bound (so PORT 0 shows the port the system chose).
//
// Rules:
// - Each step prints one line on stdout, flushed at once. A failed step prints `denied: CODE` when the
//   wasi:sockets error-code is access-denied or not-permitted, else `error: CODE` (an error-code name such as
//   connection-refused; `closed` for a stream closed under a write), and the command ends with status 1 — the
//   only failure status wasi:cli/run@0.2 has. Bad arguments: a message on stderr, status 1.
// - Every resource is disposed explicitly, children before parents (pollables and streams before their socket):
//   wasmtime traps with "resource has children" when a parent goes first, which is what QuickJS's garbage
//   collector may do if handles are left to it.
// - No resource is obtained at module top level: componentize-qjs snapshots the initialised module (Wizer), and
//   a handle taken during the snapshot does not exist at run time ("unknown handle index").
// - Blocking waits are pollable.block() (wasi:io/poll), so a guest waiting for a client sits in one host call
//   until a kill ends it.
import environment from "wasi:cli/environment@0.2.12";
import stdoutApi from "wasi:cli/stdout@0.2.12";
import stderrApi from "wasi:cli/stderr@0.2.12";
import instanceNetwork from "wasi:sockets/instance-network@0.2.12";
import tcpCreate from "wasi:sockets/tcp-create-socket@0.2.12";
import udpCreate from "wasi:sockets/udp-create-socket@0.2.12";

const GREETING = "hello from wasm\n";
const WRITE_CHUNK = 4096; // output-stream.blocking-write-and-flush takes at most 4096 bytes (wasi:io/streams)
const READ_CHUNK = 65536;
const USAGE = "usage: net listen ADDR PORT [COUNT] | connect ADDR PORT | udp-send ADDR PORT TEXT | "
    + "udp-echo ADDR PORT | create | alloc MAX_MIB [fail]";

/** A usage mistake: reported on stderr, not as a step. */
class UsageError extends Error {}

// ---- text ------------------------------------------------------------------------------------------------

/** UTF-8 bytes of `text` (QuickJS has no TextEncoder). */
function encode(text) {
    const binary = unescape(encodeURIComponent(text));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
}

/** Text of UTF-8 `bytes` (a Uint8Array or an Array); bytes that are not UTF-8 come out one char per byte. */
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

// ---- resources -------------------------------------------------------------------------------------------

/** What one action holds, disposed in reverse order of acquisition: a child, owned after its parent, goes first. */
class Scope {
    constructor() {
        this.held = [];
    }

    own(resource) {
        this.held.push(resource);
        return resource;
    }

    /** Dispose `resource` now; its children must have been released before it. */
    release(resource) {
        const at = this.held.lastIndexOf(resource);
        if (at >= 0) this.held.splice(at, 1);
        resource[Symbol.dispose]();
    }

    close() {
        while (this.held.length > 0) {
            try {
                this.held.pop()[Symbol.dispose]();
            } catch {
                // already consumed or gone with its owner: nothing left to free
            }
        }
    }
}

/** Block until `resource` (a socket or stream) is ready: one pollable, disposed before returning. */
function wait(resource) {
    const pollable = resource.subscribe();
    try {
        pollable.block();
    } finally {
        pollable[Symbol.dispose]();
    }
}

// ---- errors ----------------------------------------------------------------------------------------------

/**
 * The wasi:sockets error-code name carried by a thrown binding error, or null for anything else.
 * componentize-qjs throws an Error whose `payload` is the result's error value: an error-code enum as its name
 * (a string), or a wasi:io stream-error variant ({tag: "closed"} / {tag: "last-operation-failed", val: error}).
 */
function errorCode(e) {
    if (!(e instanceof Error) || !("payload" in e)) return null;
    if (e.netCode !== undefined) return e.netCode;
    const payload = e.payload;
    let code = null;
    if (typeof payload === "string") {
        code = payload;
    } else if (payload && payload.tag === "closed") {
        code = "closed";
    } else if (payload && payload.tag === "last-operation-failed") {
        const ioError = payload.val;
        try {
            // wasi:sockets/network's network-error-code is @unstable in 0.2, so the bindings lack it: the
            // host's description of the error is what there is.
            code = ioError.toDebugString();
        } finally {
            ioError[Symbol.dispose]();
        }
    }
    e.netCode = code;
    return code;
}

/** The line a failed step prints. */
function describe(e) {
    const code = errorCode(e);
    if (code === null) return `error: ${e instanceof Error ? e.message : String(e)}`;
    return code === "access-denied" || code === "not-permitted" ? `denied: ${code}` : `error: ${code}`;
}

/** Run `operation` (a finish-* call) until it stops answering would-block, waiting on `socket` in between. */
function finish(socket, operation) {
    for (;;) {
        try {
            return operation();
        } catch (e) {
            if (errorCode(e) !== "would-block") throw e;
        }
        wait(socket);
    }
}

// ---- addresses -------------------------------------------------------------------------------------------

function parseIpv4(text) {
    const parts = text.split(".");
    if (parts.length !== 4 || !parts.every((p) => /^[0-9]{1,3}$/.test(p) && Number(p) <= 255)) return null;
    return parts.map(Number);
}

/** The eight 16-bit groups of an IPv6 address (RFC 4291 section 2.2 text forms), or null. */
function parseIpv6(text) {
    const halves = text.split("::");
    if (halves.length > 2) return null;
    const groupsOf = (part) => (part === "" ? [] : part.split(":"));
    const head = groupsOf(halves[0]);
    const tail = halves.length === 2 ? groupsOf(halves[1]) : [];
    const last = halves.length === 2 ? tail : head;
    if (last.length > 0 && last[last.length - 1].includes(".")) { // form 3: x:x:x:x:x:x:d.d.d.d
        const v4 = parseIpv4(last.pop());
        if (v4 === null) return null;
        last.push(((v4[0] << 8) | v4[1]).toString(16), ((v4[2] << 8) | v4[3]).toString(16));
    }
    if (![...head, ...tail].every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return null;
    const words = (groups) => groups.map((g) => parseInt(g, 16));
    if (halves.length === 1) return head.length === 8 ? words(head) : null;
    const zeros = 8 - head.length - tail.length;
    if (zeros < 1) return null;
    return [...words(head), ...new Array(zeros).fill(0), ...words(tail)];
}

function parsePort(text) {
    if (!/^[0-9]{1,5}$/.test(text) || Number(text) > 65535) throw new UsageError(`bad port ${JSON.stringify(text)}`);
    return Number(text);
}

/** {family, address, wildcard}: wasi:sockets ip-address-family, ip-socket-address, and the family's any-address. */
function parseSocketAddress(text, port) {
    const bare = text.startsWith("[") && text.endsWith("]") ? text.slice(1, -1) : text;
    const v4 = parseIpv4(bare);
    if (v4 !== null) {
        return {
            family: "ipv4",
            address: { tag: "ipv4", val: { port, address: v4 } },
            wildcard: { tag: "ipv4", val: { port: 0, address: [0, 0, 0, 0] } },
        };
    }
    const v6 = bare.includes(":") ? parseIpv6(bare) : null;
    if (v6 !== null) {
        const v6Address = (words, p) => ({ tag: "ipv6", val: { port: p, flowInfo: 0, address: words, scopeId: 0 } });
        return { family: "ipv6", address: v6Address(v6, port), wildcard: v6Address(new Array(8).fill(0), 0) };
    }
    throw new UsageError(`bad address ${JSON.stringify(text)} (an IPv4 dotted quad or an IPv6 address)`);
}

function boundPort(socket) {
    return socket.localAddress().val.port;
}

// ---- actions ---------------------------------------------------------------------------------------------

function listen(out, scope, [addrText, portText, countText = "1"]) {
    const target = parseSocketAddress(addrText, parsePort(portText));
    if (!/^[0-9]+$/.test(countText)) throw new UsageError(`bad COUNT ${JSON.stringify(countText)}`);
    const count = Number(countText);
    const net = scope.own(instanceNetwork.instanceNetwork());
    const listener = scope.own(tcpCreate.createTcpSocket(target.family));
    listener.startBind(net, target.address);
    finish(listener, () => listener.finishBind());
    listener.startListen();
    finish(listener, () => listener.finishListen());
    out(`listening ${addrText}:${boundPort(listener)}`);
    for (let served = 0; count === 0 || served < count; served++) {
        const [client, input, output] = finish(listener, () => listener.accept());
        scope.own(client);
        scope.own(input);
        scope.own(output);
        writeAll(output, encode(GREETING));
        scope.release(output); // children first, then the socket: its close sends FIN to the client
        scope.release(input);
        scope.release(client);
        out("served");
    }
}

function connect(out, scope, [addrText, portText]) {
    const target = parseSocketAddress(addrText, parsePort(portText));
    const net = scope.own(instanceNetwork.instanceNetwork());
    const socket = scope.own(tcpCreate.createTcpSocket(target.family));
    socket.startConnect(net, target.address);
    const [input, output] = finish(socket, () => socket.finishConnect());
    scope.own(input);
    scope.own(output);
    out("connected");
    const chunks = [];
    let length = 0;
    for (;;) {
        let chunk;
        try {
            chunk = input.blockingRead(READ_CHUNK);
        } catch (e) {
            if (errorCode(e) === "closed") break; // end of stream: the peer closed its side
            throw e;
        }
        chunks.push(chunk);
        length += chunk.length;
    }
    const received = new Uint8Array(length);
    for (let at = 0, i = 0; i < chunks.length; at += chunks[i].length, i++) received.set(chunks[i], at);
    out(`received ${decode(received).replace(/\n$/, "")}`);
}

function udpSend(out, scope, [addrText, portText, text]) {
    const target = parseSocketAddress(addrText, parsePort(portText));
    const net = scope.own(instanceNetwork.instanceNetwork());
    const socket = scope.own(udpCreate.createUdpSocket(target.family));
    socket.startBind(net, target.wildcard);
    finish(socket, () => socket.finishBind());
    // stream(none): not connected, so each datagram names its remote-address (wasi:sockets/udp, `stream`)
    const [incoming, outgoing] = socket.stream(null);
    scope.own(incoming);
    scope.own(outgoing);
    while (outgoing.checkSend() === 0) wait(outgoing);
    const sent = outgoing.send([{ data: encode(text), remoteAddress: target.address }]);
    if (sent !== 1) throw new Error(`the datagram was not sent (send accepted ${sent} of 1)`);
    out("sent");
}

function udpEcho(out, scope, [addrText, portText]) {
    const target = parseSocketAddress(addrText, parsePort(portText));
    const net = scope.own(instanceNetwork.instanceNetwork());
    const socket = scope.own(udpCreate.createUdpSocket(target.family));
    socket.startBind(net, target.address);
    finish(socket, () => socket.finishBind());
    out(`bound ${addrText}:${boundPort(socket)}`);
    const [incoming, outgoing] = socket.stream(null);
    scope.own(incoming);
    scope.own(outgoing);
    for (;;) {
        const datagrams = incoming.receive(1);
        if (datagrams.length > 0) {
            out(`got ${decode(datagrams[0].data)}`);
            return;
        }
        wait(incoming);
    }
}

function create(out, scope) {
    scope.own(tcpCreate.createTcpSocket("ipv4"));
    out("created");
}

function alloc(out, scope, [maxText, mode = ""]) {
    const max = Number(maxText);
    if (!Number.isInteger(max) || max < 1) throw new UsageError(`alloc: bad MAX_MIB ${JSON.stringify(maxText)}`);
    const kept = [];
    try {
        while (kept.length < max) {
            const chunk = new Uint8Array(1024 * 1024);
            chunk.fill(kept.length & 0xff); // touch every page
            kept.push(chunk);
            out(`${kept.length} MiB`);
        }
    } catch (e) {
        out(`allocation failed at ${kept.length} MiB`);
        if (mode === "fail") throw e;
        return;
    }
    out(`reached ${kept.length} MiB`);
}

/** name -> [fewest arguments, most arguments, action] */
const ACTIONS = {
    listen: [2, 3, listen],
    connect: [2, 2, connect],
    "udp-send": [3, 3, udpSend],
    "udp-echo": [2, 2, udpEcho],
    create: [0, 0, create],
    alloc: [1, 2, alloc],
};

/** Run the action argv names; true when every step succeeded. */
function main(argv, out, complain) {
    const [name, ...rest] = argv;
    const entry = Object.prototype.hasOwnProperty.call(ACTIONS, name ?? "") ? ACTIONS[name] : undefined;
    if (entry === undefined || rest.length < entry[0] || rest.length > entry[1]) {
        if (entry === undefined && name !== undefined) complain(`net: unknown action ${JSON.stringify(name)}`);
        if (entry !== undefined) complain(`net: ${name}: wrong number of arguments`);
        complain(USAGE);
        return false;
    }
    const scope = new Scope();
    try {
        entry[2](out, scope, rest);
        return true;
    } catch (e) {
        if (e instanceof UsageError) {
            complain(`net: ${e.message}`);
            complain(USAGE);
        } else {
            out(describe(e));
        }
        return false;
    } finally {
        scope.close();
    }
}

export const run = {
    run() {
        const stdout = stdoutApi.getStdout();
        const stderr = stderrApi.getStderr();
        try {
            const out = (line) => writeAll(stdout, encode(line + "\n"));
            const complain = (line) => writeAll(stderr, encode(line + "\n"));
            if (!main(environment.getArguments().slice(1), out, complain)) {
                throw "failed"; // run returns err: the command exits with status 1 (wasi:cli/run@0.2)
            }
        } finally {
            stderr[Symbol.dispose]();
            stdout[Symbol.dispose]();
        }
    },
};
