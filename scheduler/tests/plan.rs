//! The residency plan on synthetic tensor tables: what is pinned, what streams, the budget
//! arithmetic and the minimum-budget error.

use flashstream_formats::gguf::GgufFile;
use flashstream_formats::{GgmlType, GgufModel, Metadata, TensorInfo};
use flashstream_scheduler::plan::{DEFAULT_CTX, MIN_EXPERT_SLOTS};
use flashstream_scheduler::{Plan, PlanRequest, RuntimeNeeds, SchedulerError, UnitId, UnitTable};

const MIB: u64 = 1 << 20;

/// A model of F32 tensors laid out one after another, from `(name, bytes, shape)`.
fn model_of(specs: Vec<(String, u64, Vec<u64>)>) -> GgufModel {
    let mut at = 4096u64;
    let tensors = specs
        .into_iter()
        .map(|(name, bytes, shape)| {
            let t = TensorInfo {
                name,
                ty: GgmlType::F32,
                shape,
                file: 0,
                offset: at,
                n_bytes: bytes,
            };
            at += bytes.div_ceil(32) * 32;
            t
        })
        .collect();
    GgufModel::from_parts(
        vec![GgufFile {
            path: "/nonexistent".into(),
            len: at,
            version: 3,
            data_offset: 4096,
            alignment: 32,
        }],
        Metadata::new(),
        tensors,
    )
    .unwrap()
}

/// A dense model: `layers` layers of `layer_bytes` (two tensors each), an output head of
/// `head_bytes` (none: tied), a 1 MiB embedding and a small norm.
fn dense(layers: usize, layer_bytes: u64, head_bytes: Option<u64>) -> GgufModel {
    let mut t = vec![("token_embd.weight".into(), MIB, vec![256, 1024])];
    for l in 0..layers {
        t.push((format!("blk.{l}.attn_norm.weight"), 1024, vec![256]));
        let up = layer_bytes - 1024;
        t.push((format!("blk.{l}.ffn_up.weight"), up, vec![up / 4]));
    }
    t.push(("output_norm.weight".into(), 1024, vec![256]));
    if let Some(h) = head_bytes {
        t.push(("output.weight".into(), h, vec![256, h / 1024]));
    }
    model_of(t)
}

fn needs(fixed: u64, kv_per_pos: u64) -> RuntimeNeeds {
    RuntimeNeeds {
        fixed: vec![("activations".into(), fixed)],
        kv_bytes_per_pos: kv_per_pos,
        n_ctx_max: 8192,
        experts_per_token: 0,
    }
}

fn check_invariants(p: &Plan, units: &UnitTable) {
    assert!(
        p.total_bytes() <= p.budget,
        "{} > {}",
        p.total_bytes(),
        p.budget
    );
    // Every per-token unit is pinned or in the cycle, never both.
    for u in units.iter() {
        let pinned = p.pinned.contains(&u.id);
        let streamed = p.cycle.contains(&u.id);
        assert!(!(pinned && streamed), "{:?} both pinned and streamed", u.id);
        if let UnitId::Layer(_)
        | UnitId::Piece { .. }
        | UnitId::Head
        | UnitId::HeadRows(_)
        | UnitId::Globals = u.id
        {
            assert!(pinned || streamed, "{:?} neither pinned nor streamed", u.id);
        }
    }
    if !p.cycle.is_empty() {
        assert!(p.n_slots >= 2 && p.n_slots == p.prefetch_depth + 1);
        for id in &p.cycle {
            let pos = units.position(*id).unwrap();
            assert!(p.layouts[pos].bytes <= p.slot_bytes);
        }
    }
    let streamed: u64 = p
        .cycle
        .iter()
        .map(|id| p.layouts[units.position(*id).unwrap()].bytes)
        .sum();
    assert_eq!(streamed, p.ring_bytes_per_token);
}

#[test]
fn everything_fits() {
    let m = dense(8, 4 * MIB, Some(2 * MIB));
    let units = UnitTable::from_model(&m).unwrap();
    let p = Plan::compute(
        &units,
        &needs(MIB, 1024),
        &PlanRequest::new(200 * MIB, false),
    )
    .unwrap();
    check_invariants(&p, &units);
    assert!(p.cycle.is_empty());
    assert!(!p.streams());
    assert_eq!(p.n_slots, 0);
    assert!(
        !p.embedding_on_demand,
        "room to spare: the embedding is pinned"
    );
    assert_eq!(p.n_ctx, DEFAULT_CTX);
    assert_eq!(p.kv_bytes, DEFAULT_CTX as u64 * 1024);
    assert_eq!(p.predicted_tokens_per_s(2.0), None);
}

#[test]
fn tight_budget_streams_what_does_not_fit() {
    let m = dense(10, 4 * MIB, Some(2 * MIB));
    let units = UnitTable::from_model(&m).unwrap();
    let mut req = PlanRequest::new(30 * MIB, false);
    req.ctx = Some(256);
    let p = Plan::compute(&units, &needs(MIB, 1024), &req).unwrap();
    check_invariants(&p, &units);
    assert!(!p.cycle.is_empty());
    assert_eq!(p.n_slots, 3, "the default prefetch depth of 2 fits");
    // The embedding is pinned only from what is left after the ring and the pinned layers.
    assert_eq!(p.embedding_on_demand, p.row_scratch_bytes > 0);
    // The cycle is in layer order, the head (smaller than a layer) last if streamed.
    let mut sorted = p.cycle.clone();
    sorted.sort();
    assert_eq!(sorted, p.cycle);
    // Bytes per token = what is not pinned; the prediction follows.
    let tps = p.predicted_tokens_per_s(2.0).unwrap();
    assert!((tps - 2e9 / p.ring_bytes_per_token as f64).abs() < 1e-6);
    // Pinned layers are spread, not bunched at the start.
    let pinned_layers: Vec<usize> = p
        .pinned
        .iter()
        .filter_map(|u| match u {
            UnitId::Layer(l) => Some(*l),
            _ => None,
        })
        .collect();
    assert!(!pinned_layers.is_empty());
    assert!(pinned_layers.iter().any(|&l| l >= 5), "{pinned_layers:?}");
}

#[test]
fn a_large_head_streams_in_row_ranges_no_larger_than_a_layer() {
    // Head 12 MiB, layers 2 MiB: slots of 12 MiB would waste 3 x 10 MiB; the head is six
    // ranges of rows instead, each pinned or streamed like a layer.
    let m = dense(20, 2 * MIB, Some(12 * MIB));
    let units = UnitTable::from_model(&m).unwrap();
    assert!(units.get(UnitId::Head).is_none());
    let rows: Vec<&flashstream_scheduler::Unit> = units.head_rows().collect();
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|u| u.bytes() <= 2 * MIB));
    assert_eq!(rows.iter().map(|u| u.bytes()).sum::<u64>(), 12 * MIB);
    assert_eq!(
        units.embedding_pieces(),
        None,
        "the embedding is not the head"
    );
    let mut req = PlanRequest::new(40 * MIB, false);
    req.ctx = Some(128);
    let p = Plan::compute(&units, &needs(MIB, 1024), &req).unwrap();
    check_invariants(&p, &units);
    assert!(p.slot_bytes < 3 * MIB);
    // Streamed head ranges come last, in row order.
    let streamed_rows: Vec<usize> = p
        .cycle
        .iter()
        .filter_map(|u| match u {
            UnitId::HeadRows(k) => Some(*k),
            _ => None,
        })
        .collect();
    let mut sorted = streamed_rows.clone();
    sorted.sort_unstable();
    assert_eq!(streamed_rows, sorted);
}

/// A dense model whose layers are a norm and three 2-D matrices (attention query, FFN up and
/// down) of `mat` bytes each; `embd_rows` rows of 1 KiB in a tied embedding.
fn split_model(layers: usize, mat: u64, embd_rows: u64) -> GgufModel {
    let mut t = vec![(
        "token_embd.weight".into(),
        embd_rows * 1024,
        vec![256, embd_rows],
    )];
    for l in 0..layers {
        t.push((format!("blk.{l}.attn_norm.weight"), 1024, vec![256]));
        for m in ["attn_q", "ffn_up", "ffn_down"] {
            t.push((format!("blk.{l}.{m}.weight"), mat, vec![256, mat / 1024]));
        }
    }
    t.push(("output_norm.weight".into(), 1024, vec![256]));
    model_of(t)
}

#[test]
fn dense_layers_stream_matrix_by_matrix_with_their_cores_pinned() {
    let m = split_model(6, MIB, 2048);
    let units = UnitTable::from_model(&m).unwrap();
    // Each layer: a core (the norm) and three pieces; the 2 MiB tied embedding, larger than
    // a piece, is two head ranges (and no embedding unit).
    for l in 0..6 {
        assert_eq!(units.get(UnitId::Layer(l)).unwrap().parts.len(), 1);
        assert_eq!(units.pieces(l).count(), 3);
    }
    assert!(units.get(UnitId::Embedding).is_none());
    assert_eq!(
        units.embedding_pieces(),
        Some((units.position(UnitId::HeadRows(0)).unwrap(), 1024))
    );
    let mut req = PlanRequest::new(12 * MIB, true);
    req.ctx = Some(64);
    let p = Plan::compute(&units, &needs(MIB, 1024), &req).unwrap();
    check_invariants(&p, &units);
    for l in 0..6 {
        assert!(p.pinned.contains(&UnitId::Layer(l)), "core {l} is pinned");
    }
    // Slots hold one matrix, not a layer of three.
    assert!(p.slot_bytes < 2 * MIB, "{}", p.slot_bytes);
    assert!(!p.cycle.is_empty());
    // The cycle is in use order: by layer, then query, up, down; the head rows last.
    let order = |u: &UnitId| match *u {
        UnitId::Piece { layer, piece } => (layer, piece),
        UnitId::HeadRows(k) => (usize::MAX, k),
        other => panic!("{other:?} in the cycle"),
    };
    let keys: Vec<(usize, usize)> = p.cycle.iter().map(order).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(keys, sorted);
    // Rows come from flash unless every head range is pinned.
    let all_rows_pinned = units.head_rows().all(|u| p.pinned.contains(&u.id));
    assert_eq!(p.embedding_on_demand, !all_rows_pinned);
}

#[test]
fn a_layer_with_a_large_core_stays_whole() {
    // The norm is as large as the matrices: pinning it would not be small.
    let m = split_model(2, 1024, 16);
    let units = UnitTable::from_model(&m).unwrap();
    assert_eq!(units.pieces(0).count(), 0);
    assert_eq!(units.get(UnitId::Layer(0)).unwrap().parts.len(), 4);
}

#[test]
fn tied_output_streams_the_embedding_as_the_head() {
    let m = dense(10, 4 * MIB, None);
    let units = UnitTable::from_model(&m).unwrap();
    let mut req = PlanRequest::new(24 * MIB, true);
    req.ctx = Some(64);
    let p = Plan::compute(&units, &needs(MIB, 1024), &req).unwrap();
    check_invariants(&p, &units);
    let embd_streamed = p.cycle.contains(&UnitId::Embedding);
    let embd_pinned = p.pinned.contains(&UnitId::Embedding);
    assert!(embd_streamed ^ embd_pinned);
    assert_eq!(p.embedding_on_demand, embd_streamed);
    if embd_streamed {
        assert_eq!(p.cycle.last(), Some(&UnitId::Embedding));
    }
}

#[test]
fn too_small_a_budget_states_the_minimum_and_the_minimum_works() {
    let m = dense(10, 4 * MIB, Some(2 * MIB));
    let units = UnitTable::from_model(&m).unwrap();
    let mut req = PlanRequest::new(6 * MIB, false);
    req.ctx = Some(512);
    let err = Plan::compute(&units, &needs(MIB, 1024), &req).unwrap_err();
    let SchedulerError::BudgetTooSmall {
        minimum, breakdown, ..
    } = &err
    else {
        panic!("{err}");
    };
    let msg = err.to_string();
    assert!(msg.contains("raise --mem"), "{msg}");
    assert!(
        breakdown.contains("KV cache for 512 positions"),
        "{breakdown}"
    );
    assert!(breakdown.contains("activations"), "{breakdown}");
    req.budget = *minimum;
    let p = Plan::compute(&units, &needs(MIB, 1024), &req).unwrap();
    check_invariants(&p, &units);
    assert_eq!(p.n_slots, 2);
    req.budget = *minimum - 1;
    assert!(Plan::compute(&units, &needs(MIB, 1024), &req).is_err());
}

#[test]
fn default_context_shrinks_to_fit_and_explicit_context_does_not() {
    let m = dense(4, 4 * MIB, Some(MIB));
    let units = UnitTable::from_model(&m).unwrap();
    // 64 KiB per position: the default 4096 positions would need 256 MiB.
    let n = needs(MIB, 64 << 10);
    let mut req = PlanRequest::new(40 * MIB, false);
    req.min_ctx = 100;
    let p = Plan::compute(&units, &n, &req).unwrap();
    check_invariants(&p, &units);
    assert!(p.n_ctx >= 100 && p.n_ctx < DEFAULT_CTX, "{}", p.n_ctx);
    req.ctx = Some(4096);
    assert!(matches!(
        Plan::compute(&units, &n, &req),
        Err(SchedulerError::BudgetTooSmall { .. })
    ));
    req.ctx = Some(50);
    assert!(matches!(
        Plan::compute(&units, &n, &req),
        Err(SchedulerError::BadRequest(_))
    ));
    req.ctx = Some(100_000);
    assert!(Plan::compute(&units, &n, &req)
        .unwrap_err()
        .to_string()
        .contains("8192"));
}

/// A qwen3moe-like table: per layer an attention part and `n_exp` experts in fused tensors.
fn moe(layers: usize, n_exp: u64, expert_bytes: u64) -> GgufModel {
    let mut tensors = Vec::new();
    let mut at = 4096u64;
    let mut add = |name: String, bytes: u64, shape: Vec<u64>| {
        tensors.push(TensorInfo {
            name,
            ty: GgmlType::F32,
            shape,
            file: 0,
            offset: at,
            n_bytes: bytes,
        });
        at += bytes.div_ceil(32) * 32;
    };
    add("token_embd.weight".into(), MIB, vec![256, 1024]);
    for l in 0..layers {
        add(format!("blk.{l}.attn_q.weight"), MIB, vec![256, 1024]);
        for t in ["gate", "up", "down"] {
            let per = expert_bytes / 3;
            add(
                format!("blk.{l}.ffn_{t}_exps.weight"),
                per * n_exp,
                vec![256, per / 1024, n_exp],
            );
        }
    }
    add("output_norm.weight".into(), 1024, vec![256]);
    add("output.weight".into(), MIB, vec![256, 1024]);
    let len = at;
    GgufModel::from_parts(
        vec![GgufFile {
            path: "/nonexistent".into(),
            len,
            version: 3,
            data_offset: 4096,
            alignment: 32,
        }],
        Metadata::new(),
        tensors,
    )
    .unwrap()
}

#[test]
fn moe_pins_the_shared_parts_and_gives_the_rest_to_the_expert_cache() {
    let m = moe(4, 16, 3 * MIB);
    let units = UnitTable::from_model(&m).unwrap();
    assert_eq!(units.n_expert(), 16);
    let mut n = needs(MIB, 1024);
    n.experts_per_token = 4;
    let mut req = PlanRequest::new(64 * MIB, false);
    req.ctx = Some(128);
    let p = Plan::compute(&units, &n, &req).unwrap();
    check_invariants(&p, &units);
    assert!(p.cycle.is_empty(), "the four 1 MiB layer parts are pinned");
    for l in 0..4 {
        assert!(p.pinned.contains(&UnitId::Layer(l)));
    }
    assert!(p.expert_slots >= MIN_EXPERT_SLOTS && p.expert_slots < 64);
    assert!(
        p.embedding_on_demand,
        "experts are worth more than the embedding"
    );
    // Each expert: three slices of 1 MiB in three tensors, so three aligned extents.
    let e0 = units
        .position(UnitId::Expert {
            layer: 0,
            expert: 0,
        })
        .unwrap();
    assert_eq!(p.layouts[e0].extents.len(), 3);
    assert!(p.expert_bytes_per_token_max == 4 * 4 * p.expert_slot_bytes);
    let hit = p.expert_slots as f64 / 64.0;
    assert!((p.expert_hit_rate_uniform - hit).abs() < 1e-12);
    // Below two expert slots: the minimum error.
    req.budget = 8 * MIB;
    let err = Plan::compute(&units, &n, &req).unwrap_err();
    assert!(err.to_string().contains("expert slots"), "{err}");
}

/// Leading dense layers (deepseek2, GLM-4.5) route no experts: the routed bytes a token may
/// read count only the layers that have experts.
#[test]
fn routed_bytes_per_token_count_only_the_layers_with_experts() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/models");
    // (file, trunk layers, leading dense layers, experts used per token)
    for (name, layers, dense, top_k) in [
        ("rand-deepseek2-q4k.gguf", None, 1, None),
        ("rand-glm4moe-q5k.gguf", Some(4), 1, Some(4)),
        ("rand-qwen3moe-q4km.gguf", None, 0, None),
    ] {
        let m = GgufModel::open(dir.join(name)).unwrap();
        let units = UnitTable::from_model(&m).unwrap();
        let n_layer = units.n_layer();
        if let Some(l) = layers {
            assert_eq!(
                n_layer, l,
                "{name}: the NextN layer is not part of the trunk"
            );
        }
        let arch = m
            .metadata
            .get_str("general.architecture")
            .unwrap()
            .to_string();
        let lead = m
            .metadata
            .get(&format!("{arch}.leading_dense_block_count"))
            .and_then(|v| v.as_u64())
            .unwrap_or(0) as usize;
        assert_eq!(lead, dense, "{name}");
        assert_eq!(units.n_expert_layers(), n_layer - dense, "{name}");
        let used = m
            .metadata
            .get(&format!("{arch}.expert_used_count"))
            .and_then(|v| v.as_u64())
            .unwrap() as usize;
        if let Some(k) = top_k {
            assert_eq!(used, k);
        }
        let mut n = needs(MIB, 1024);
        n.experts_per_token = used;
        let mut req = PlanRequest::new(1 << 40, m.tensor("output.weight").is_none());
        req.ctx = Some(64);
        // A budget with room for the expert cache but not for every expert.
        let min = match Plan::compute(
            &units,
            &n,
            &PlanRequest {
                budget: 1 << 12,
                ..req.clone()
            },
        ) {
            Err(SchedulerError::BudgetTooSmall { minimum, .. }) => minimum,
            other => panic!("{name}: {:?}", other.map(|p| p.budget)),
        };
        req.budget = min;
        let p = Plan::compute(&units, &n, &req).unwrap();
        assert!(p.expert_slots > 0, "{name}");
        assert_eq!(
            p.expert_bytes_per_token_max,
            ((n_layer - dense) * used) as u64 * p.expert_slot_bytes,
            "{name}"
        );
    }
}
