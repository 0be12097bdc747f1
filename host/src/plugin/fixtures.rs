//! Test fixtures shared by the unit tests of the plugin runtime's users
//! (the plugin operations and the API): a minimal valid plugin.

/// A component that passes for a plugin: it starts, and answers every event
/// with no updates. Enough for the API, which only lists plugins.
pub const QUIET_PLUGIN: &str = r#"
(component
  (core module $m
    (memory (export "memory") 1)
    (global $next (mut i32) (i32.const 8192))
    (func (export "realloc") (param i32 i32) (param $align i32) (param $size i32) (result i32)
      (local $at i32)
      (local.set $at
        (i32.and
          (i32.add (global.get $next) (i32.sub (local.get $align) (i32.const 1)))
          (i32.sub (i32.const 0) (local.get $align))))
      (global.set $next (i32.add (local.get $at) (local.get $size)))
      (block $fits
        (br_if $fits (i32.le_u (global.get $next) (i32.mul (memory.size) (i32.const 65536))))
        (drop (memory.grow
          (i32.add (i32.const 1)
            (i32.shr_u (i32.sub (global.get $next) (i32.mul (memory.size) (i32.const 65536)))
                       (i32.const 16))))))
      (local.get $at))
    ;; `ok` is discriminant 0, and memory starts zeroed.
    (func (export "init") (param i32 i32) (result i32) (i32.const 32))
    ;; One `ok([])` per event: 16 zero bytes each, from offset 1024.
    (func (export "enrich") (param i32) (param $len i32) (result i32)
      (i32.store (i32.const 16) (i32.const 1024))
      (i32.store (i32.const 20) (local.get $len))
      (i32.const 16)))
  (core instance $i (instantiate $m))
  (alias core export $i "memory" (core memory $mem))
  (alias core export $i "realloc" (core func $realloc))
  (type $event' (record
    (field "id" string) (field "user-id" string) (field "kind" string)
    (field "timestamp-ms" s64) (field "user-agent" (option string))
    (field "url" (option string)) (field "properties" string)))
  (export $event "event" (type $event'))
  (type $value' (variant
    (case "text" string) (case "integer" s64) (case "float" f64)
    (case "boolean" bool) (case "timestamp" s64)))
  (export $value "value" (type $value'))
  (type $update' (variant
    (case "set" (tuple string $value)) (case "increment" (tuple string s64))
    (case "max" (tuple string $value)) (case "min" (tuple string $value))))
  (export $update "update" (type $update'))
  (type $error' (variant (case "invalid-event" string) (case "internal" string)))
  (export $error "enrich-error" (type $error'))
  (func $init (param "config" (list (tuple string string))) (result (result (error string)))
    (canon lift (core func $i "init") (memory $mem) (realloc $realloc)))
  (export "init" (func $init))
  (func $enrich (param "events" (list $event))
    (result (list (result (list $update) (error $error))))
    (canon lift (core func $i "enrich") (memory $mem) (realloc $realloc)))
  (export "enrich" (func $enrich)))
"#;

pub const QUIET_MANIFEST: &str = r#"
name = "quiet"
version = "1.2.3"
description = "Says nothing."
events = ["page_view", "click"]
writes = ["quiet_count"]

[limits]
memory-mb = 4096
timeout-ms = 5
"#;
