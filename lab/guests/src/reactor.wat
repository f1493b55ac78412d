;; reactor: a WASI reactor (no _start). `_initialize` prints "initialized"; `greet` prints "hello from greet".
;; Started as reactor.wasm#greet, the engine calls _initialize first.
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 0) "\10\00\00\00\0c\00\00\00")
  (data (i32.const 16) "initialized\n")
  (data (i32.const 32) "\30\00\00\00\11\00\00\00")
  (data (i32.const 48) "hello from greet\n")
  (func (export "_initialize")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100))))
  (func (export "greet")
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 100)))))
