;; multimem: a hostile guest for memory limits. Four linear memories (multi-memory), grown in turn 1 MiB at a time
;; and filled with 0xa5 (so the pages are really used), up to 60 MiB each: 240 MiB in all. Prints `N MiB` (the
;; total) after each MiB; `filled 240 MiB` and exit 0 when every growth succeeded; when one is refused,
;; `memory.grow refused at N MiB` and a trap (it fails for lack of memory). With any argument it spins after a
;; refusal instead of trapping (so its footprint can be measured before it is killed).
(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (memory $m0 (export "memory") 1)
  (memory $m1 0)
  (memory $m2 0)
  (memory $m3 0)
  ;; memory 0, page 0: iovec at 0, nwritten at 8, argc at 16, digits in 24..63, texts from 200
  (data $m0 (i32.const 200) " MiB\0a")
  (data $m0 (i32.const 208) "filled ")
  (data $m0 (i32.const 216) "memory.grow refused at ")

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

  ;; Grow memory $which by 1 MiB and fill it: 1, or 0 when the growth was refused.
  (func $grow (param $which i32) (result i32)
    (local $old i32)
    (block $b3
      (block $b2
        (block $b1
          (block $b0
            (br_table $b0 $b1 $b2 $b3 (local.get $which)))
          (local.set $old (memory.grow $m0 (i32.const 16)))
          (if (i32.eq (local.get $old) (i32.const -1)) (then (return (i32.const 0))))
          (memory.fill $m0 (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xa5) (i32.const 0x100000))
          (return (i32.const 1)))
        (local.set $old (memory.grow $m1 (i32.const 16)))
        (if (i32.eq (local.get $old) (i32.const -1)) (then (return (i32.const 0))))
        (memory.fill $m1 (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xa5) (i32.const 0x100000))
        (return (i32.const 1)))
      (local.set $old (memory.grow $m2 (i32.const 16)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then (return (i32.const 0))))
      (memory.fill $m2 (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xa5) (i32.const 0x100000))
      (return (i32.const 1)))
    (local.set $old (memory.grow $m3 (i32.const 16)))
    (if (i32.eq (local.get $old) (i32.const -1)) (then (return (i32.const 0))))
    (memory.fill $m3 (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xa5) (i32.const 0x100000))
    (i32.const 1))

  ;; Any argument besides argv[0]: hold on (spin) after a refusal.
  (func $holding (result i32)
    (drop (call $args_sizes_get (i32.const 16) (i32.const 20)))
    (i32.gt_u (i32.load (i32.const 16)) (i32.const 1)))

  (func (export "_start")
    (local $total i32)
    (local $round i32)
    (local $which i32)
    (loop $rounds
      (local.set $which (i32.const 0))
      (loop $each
        (if (i32.eqz (call $grow (local.get $which)))
          (then
            (call $write (i32.const 216) (i32.const 23))
            (call $mib (local.get $total))
            (if (call $holding) (then (loop $spin (br $spin))))
            (unreachable)))
        (local.set $total (i32.add (local.get $total) (i32.const 1)))
        (call $mib (local.get $total))
        (local.set $which (i32.add (local.get $which) (i32.const 1)))
        (br_if $each (i32.lt_u (local.get $which) (i32.const 4))))
      (local.set $round (i32.add (local.get $round) (i32.const 1)))
      (br_if $rounds (i32.lt_u (local.get $round) (i32.const 60))))
    (call $write (i32.const 208) (i32.const 7))
    (call $mib (local.get $total))))
