;; instances: a hostile component for memory limits. Eight core instances of one module ($Hog), each with a linear
;; memory of its own, grown in turn 1 MiB at a time and filled with 0xa5 (so the pages are really used), up to 30 MiB
;; each: 240 MiB in all. A wasi:cli command (exports wasi:cli/run@0.2.0, prints through wasi:cli/stdout). Prints
;; `N MiB` (the total) after each MiB; `filled 240 MiB` and run returns ok when every growth succeeded; when one is
;; refused, `memory.grow refused at N MiB` and a trap (it fails for lack of memory). Hand-written: no toolchain
;; makes a component with more instances than it needs.
(component
  (import "wasi:io/error@0.2.0" (instance $io-error
    (export "error" (type (sub resource)))))
  (alias export $io-error "error" (type $error))
  (import "wasi:io/streams@0.2.0" (instance $streams
    (alias outer 1 $error (type (;0;)))
    (export (;1;) "error" (type (eq 0)))
    (export (;2;) "output-stream" (type (sub resource)))
    (type (;3;) (own 1))
    (type (;4;) (variant (case "last-operation-failed" 3) (case "closed")))
    (export (;5;) "stream-error" (type (eq 4)))
    (type (;6;) (borrow 2))
    (type (;7;) (list u8))
    (type (;8;) (result (error 5)))
    (type (;9;) (func (param "self" 6) (param "contents" 7) (result 8)))
    (export "[method]output-stream.blocking-write-and-flush" (func (type 9)))))
  (alias export $streams "output-stream" (type $output-stream))
  (import "wasi:cli/stdout@0.2.0" (instance $stdout
    (alias outer 1 $output-stream (type (;0;)))
    (export (;1;) "output-stream" (type (eq 0)))
    (type (;2;) (own 1))
    (type (;3;) (func (result 2)))
    (export "get-stdout" (func (type 3)))))
  (alias export $stdout "get-stdout" (func $get-stdout))
  (alias export $streams "[method]output-stream.blocking-write-and-flush" (func $write))

  ;; The memory the canonical ABI writes through (the text to print), in an instance of its own.
  (core module $Memory (memory (export "memory") 1))
  (core instance $memory (instantiate $Memory))
  (alias core export $memory "memory" (core memory $mem))
  (core func $get-stdout-core (canon lower (func $get-stdout)))
  (core func $write-core (canon lower (func $write) (memory $mem)))

  (core module $Hog
    (memory 0)
    ;; Grow this instance's memory by 1 MiB and fill it: 1, or 0 when the growth was refused.
    (func (export "grow") (result i32)
      (local $old i32)
      (local.set $old (memory.grow (i32.const 16)))
      (if (i32.eq (local.get $old) (i32.const -1)) (then (return (i32.const 0))))
      (memory.fill (i32.shl (local.get $old) (i32.const 16)) (i32.const 0xa5) (i32.const 0x100000))
      (i32.const 1)))
  (core instance $hog0 (instantiate $Hog))
  (core instance $hog1 (instantiate $Hog))
  (core instance $hog2 (instantiate $Hog))
  (core instance $hog3 (instantiate $Hog))
  (core instance $hog4 (instantiate $Hog))
  (core instance $hog5 (instantiate $Hog))
  (core instance $hog6 (instantiate $Hog))
  (core instance $hog7 (instantiate $Hog))
  (alias core export $hog0 "grow" (core func $grow0))
  (alias core export $hog1 "grow" (core func $grow1))
  (alias core export $hog2 "grow" (core func $grow2))
  (alias core export $hog3 "grow" (core func $grow3))
  (alias core export $hog4 "grow" (core func $grow4))
  (alias core export $hog5 "grow" (core func $grow5))
  (alias core export $hog6 "grow" (core func $grow6))
  (alias core export $hog7 "grow" (core func $grow7))

  (core module $Main
    (type $grow (func (result i32)))
    (import "env" "memory" (memory 1))
    (import "host" "get-stdout" (func $get-stdout (result i32)))
    (import "host" "write" (func $write (param i32 i32 i32 i32)))
    (import "hogs" "0" (func $g0 (type $grow)))
    (import "hogs" "1" (func $g1 (type $grow)))
    (import "hogs" "2" (func $g2 (type $grow)))
    (import "hogs" "3" (func $g3 (type $grow)))
    (import "hogs" "4" (func $g4 (type $grow)))
    (import "hogs" "5" (func $g5 (type $grow)))
    (import "hogs" "6" (func $g6 (type $grow)))
    (import "hogs" "7" (func $g7 (type $grow)))
    (table $hogs 8 8 funcref)
    (elem (table $hogs) (i32.const 0) func $g0 $g1 $g2 $g3 $g4 $g5 $g6 $g7)
    (global $stdout (mut i32) (i32.const 0))
    ;; result area at 0 (12 bytes), digits in 24..63, texts from 200
    (data (i32.const 200) " MiB\0a")
    (data (i32.const 208) "filled ")
    (data (i32.const 216) "memory.grow refused at ")

    (func $print (param $ptr i32) (param $len i32)
      (call $write (global.get $stdout) (local.get $ptr) (local.get $len) (i32.const 0)))

    ;; "N MiB\n"
    (func $mib (param $n i32)
      (local $p i32)
      (local.set $p (i32.const 64))
      (loop $digits
        (local.set $p (i32.sub (local.get $p) (i32.const 1)))
        (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
        (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
        (br_if $digits (local.get $n)))
      (call $print (local.get $p) (i32.sub (i32.const 64) (local.get $p)))
      (call $print (i32.const 200) (i32.const 5)))

    ;; wasi:cli/run#run: 0 is ok
    (func (export "run") (result i32)
      (local $total i32)
      (local $round i32)
      (local $which i32)
      (global.set $stdout (call $get-stdout))
      (loop $rounds
        (local.set $which (i32.const 0))
        (loop $each
          (if (i32.eqz (call_indirect $hogs (type $grow) (local.get $which)))
            (then
              (call $print (i32.const 216) (i32.const 23))
              (call $mib (local.get $total))
              (unreachable)))
          (local.set $total (i32.add (local.get $total) (i32.const 1)))
          (call $mib (local.get $total))
          (local.set $which (i32.add (local.get $which) (i32.const 1)))
          (br_if $each (i32.lt_u (local.get $which) (i32.const 8))))
        (local.set $round (i32.add (local.get $round) (i32.const 1)))
        (br_if $rounds (i32.lt_u (local.get $round) (i32.const 30))))
      (call $print (i32.const 208) (i32.const 7))
      (call $mib (local.get $total))
      (i32.const 0)))
  (core instance $main (instantiate $Main
    (with "env" (instance $memory))
    (with "host" (instance
      (export "get-stdout" (func $get-stdout-core))
      (export "write" (func $write-core))))
    (with "hogs" (instance
      (export "0" (func $grow0))
      (export "1" (func $grow1))
      (export "2" (func $grow2))
      (export "3" (func $grow3))
      (export "4" (func $grow4))
      (export "5" (func $grow5))
      (export "6" (func $grow6))
      (export "7" (func $grow7))))))
  (alias core export $main "run" (core func $run-core))
  (func $run (result (result)) (canon lift (core func $run-core)))
  (instance $cli-run (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $cli-run)))
