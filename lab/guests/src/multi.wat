;; multi: a WASI preview1 module with several exports, for `path#export` entrypoints.
;;   _start -> prints "start"          greet -> prints "hello from greet"
;;   add    -> takes parameters (cannot be an entrypoint)     counter -> a global, not a function
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; iovec for "start\n" at 0, text at 16; iovec for "hello from greet\n" at 32, text at 48
  (data (i32.const 0) "\10\00\00\00\06\00\00\00")
  (data (i32.const 16) "start\n")
  (data (i32.const 32) "\30\00\00\00\11\00\00\00")
  (data (i32.const 48) "hello from greet\n")
  (global $counter (export "counter") i32 (i32.const 7))
  (func (export "_start")
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 100))))
  (func (export "greet")
    (drop (call $fd_write (i32.const 1) (i32.const 32) (i32.const 1) (i32.const 100))))
  (func (export "add") (param i32 i32) (result i32)
    (i32.add (local.get 0) (local.get 1))))
