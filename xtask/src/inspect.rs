//! `cargo xtask inspect FILE...`: the imports and exports of a component or a
//! core module, without `wasm-tools`.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};
use wasmparser::{Encoding, ExternalKind, Parser, Payload, TypeRef};

use crate::plugins::human_size;

/// What a file imports and exports at its top level.
#[derive(Debug, Default)]
pub struct Surface {
    pub component: bool,
    /// `(kind, name)`, e.g. `("instance", "wasi:cli/environment@0.2.6")`.
    pub imports: Vec<(String, String)>,
    pub exports: Vec<(String, String)>,
}

pub fn print(path: &Path) -> Result<()> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let surface = surface(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    println!(
        "{}: {} ({})",
        path.display(),
        if surface.component {
            "component"
        } else {
            "core module"
        },
        human_size(bytes.len() as u64)
    );
    if surface.component {
        match surface.plugin_world() {
            Some(version) => println!("  plugin world: pulsehub:plugin/enricher@{version}"),
            None => println!(
                "  plugin world: not told by its imports (none of pulsehub:plugin); `pulsehub plugin check` tells"
            ),
        }
    }
    for (title, items) in [("imports", &surface.imports), ("exports", &surface.exports)] {
        println!("  {title}:");
        if items.is_empty() {
            println!("    (none)");
        }
        for (kind, name) in items {
            println!("    {kind:<9} {name}");
        }
    }
    Ok(())
}

impl Surface {
    /// The version of the plugin world the component's imports of its
    /// interfaces name (`pulsehub:plugin/types@0.2.0` → `0.2.0`).
    pub fn plugin_world(&self) -> Option<&str> {
        self.imports.iter().find_map(|(_, name)| {
            let (_, version) = name.strip_prefix("pulsehub:plugin/")?.split_once('@')?;
            Some(version)
        })
    }
}

/// The top-level imports and exports; those of nested modules and components
/// (a component's core modules, the WASI adapter) are skipped.
pub fn surface(bytes: &[u8]) -> Result<Surface> {
    let mut surface = Surface::default();
    // Nesting depth: 1 while reading the outermost module or component.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { encoding, .. } => {
                depth += 1;
                if depth == 1 {
                    surface.component = encoding == Encoding::Component;
                }
            }
            Payload::End(_) => depth = depth.saturating_sub(1),
            _ if depth != 1 => {}
            Payload::ImportSection(reader) => {
                for import in reader.into_imports() {
                    let import = import?;
                    surface.imports.push((
                        core_type_kind(&import.ty).to_owned(),
                        format!("{}::{}", import.module, import.name),
                    ));
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    surface
                        .exports
                        .push((core_kind(export.kind).to_owned(), export.name.to_owned()));
                }
            }
            Payload::ComponentImportSection(reader) => {
                for import in reader {
                    let import = import?;
                    surface.imports.push((
                        import.ty.kind().desc().to_owned(),
                        import.name.full_name().into_owned(),
                    ));
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader {
                    let export = export?;
                    surface.exports.push((
                        export.kind.desc().to_owned(),
                        export.name.full_name().into_owned(),
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(surface)
}

fn core_type_kind(ty: &TypeRef) -> &'static str {
    match ty {
        TypeRef::Func(_) | TypeRef::FuncExact(_) => "func",
        TypeRef::Table(_) => "table",
        TypeRef::Memory(_) => "memory",
        TypeRef::Global(_) => "global",
        TypeRef::Tag(_) => "tag",
    }
}

fn core_kind(kind: ExternalKind) -> &'static str {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => "func",
        ExternalKind::Table => "table",
        ExternalKind::Memory => "memory",
        ExternalKind::Global => "global",
        ExternalKind::Tag => "tag",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built-ins as `cargo xtask plugins` builds them, against each world.
    #[test]
    fn tells_the_plugin_world_by_its_imports() {
        let root = crate::workspace_root().expect("root");
        for (dir, version) in [("plugins", "0.2.0"), ("plugins-0.1", "0.1.0")] {
            let path = root.join("target").join(dir).join("page-view-counter.wasm");
            let bytes = fs::read(&path).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; build the plugins first: cargo xtask plugins",
                    path.display()
                )
            });
            let surface = surface(&bytes).expect("parses");
            assert!(surface.component);
            assert_eq!(surface.plugin_world(), Some(version), "{}", path.display());
        }
    }
}
