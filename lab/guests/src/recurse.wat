;; recurse: prints "recursing", then calls itself without end (not a tail call, so each call takes a frame of
;; wasm's own call stack) until wasmtime traps with "call stack exhausted" (hostile guests).
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\0a\00\00\00")
  (data (i32.const 16) "recursing\n")
  (func $deeper (param $n i32) (result i32)
    (i32.add (call $deeper (i32.add (local.get $n) (i32.const 1))) (local.get $n)))
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100)))
    (drop (call $deeper (i32.const 0)))))
