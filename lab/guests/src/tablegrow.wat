;; tablegrow: a hostile guest for memory limits. One funcref table without a maximum, grown 131072 elements (1 MiB in
;; wasmtime, 8 bytes an element) at a time and filled with a function reference (so the pages are really used), up
;; to 240 MiB. Prints `N MiB` (the total) after each MiB; `filled 240 MiB` and exit 0 when every growth succeeded;
;; when one is refused, `table.grow refused at N MiB` and a trap (it fails for lack of memory). With any argument it
;; spins after a refusal instead of trapping (so its footprint can be measured before it is killed).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table $t 0 funcref)
  (elem declare func $filler)
  ;; iovec at 0, nwritten at 8, argc at 16, digits in 24..63, texts from 200
  (data (i32.const 200) " MiB\0a")
  (data (i32.const 208) "filled ")
  (data (i32.const 216) "table.grow refused at ")

  (func $filler)

  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))

  ;; "N MiB\n"
  (func $mib (param $n i32)
    (local $p i32)
    (local.set $p (i32.const 64))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    (call $write (local.get $p) (i32.sub (i32.const 64) (local.get $p)))
    (call $write (i32.const 200) (i32.const 5)))

  (func $holding (result i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (i32.gt_u (i32.load (i32.const 16)) (i32.const 1)))

  (func (export "_start")
    (local $total i32)
    (local $old i32)
    (loop $more
      (local.set $old (table.grow $t (ref.null func) (i32.const 131072)))
      (if (i32.eq (local.get $old) (i32.const -1))
        (then
          (call $write (i32.const 216) (i32.const 22))
          (call $mib (local.get $total))
          (if (call $holding) (then (loop $spin (br $spin))))
          (unreachable)))
      (table.fill $t (local.get $old) (ref.func $filler) (i32.const 131072))
      (local.set $total (i32.add (local.get $total) (i32.const 1)))
      (call $mib (local.get $total))
      (br_if $more (i32.lt_u (local.get $total) (i32.const 240))))
    (call $write (i32.const 208) (i32.const 7))
    (call $mib (local.get $total))))
