"""The Markdown table of a run, and the list of figures a complete run must hold."""

from __future__ import annotations

# Dotted paths into results["figures"] that every complete run (smoke or full) writes.
REQUIRED = (
    "overhead.photo_03mp_1face.ratio_p50",
    "overhead.photo_03mp_1face.ratio_p99",
    "overhead.photo_1080p_1face.ratio_p50",
    "overhead.photo_1080p_1face.ratio_p99",
    "overhead.group_4k_10faces.ratio_p50",
    "overhead.group_4k_10faces.ratio_p99",
    "causes.photo_03mp_1face.over_the_engine_ms",
    "causes.photo_1080p_1face.over_the_engine_ms",
    "causes.group_4k_10faces.over_the_engine_ms",
    "profile.hop_ms.photo_03mp_1face.bytes_p50",
    "profile.hop_ms.photo_1080p_1face.bytes_p50",
    "profile.store_ms.photo_1080p_1face.p50",
    "throughput.raw_best.images_per_s",
    "throughput.mesh.1.images_per_s",
    "throughput.mesh.2.images_per_s",
    "throughput.mesh.4.images_per_s",
    "throughput.mesh.8.images_per_s",
    "throughput.ratio_best",
    "search.largest.ann_p50_ms",
    "search.largest.recall_at_1",
    "search.largest.ann_bytes_per_face",
    "audit.append.events_per_s",
    "audit.shred.ratio",
    "audit.purge.seconds",
    "audit.purge.append_p99_ms_during",
    "audit.tree.append.ratio",
    "audit.tree.proof.ms.p50",
    "audit.tree.checkpoint.ms.p50",
    "video.end_to_end.realtime_factor",
    "video.by_rate",
    "startup.seconds.p50",
    "startup.cli.version.p50",
    "startup.cli.help.p50",
    "startup.cli.projects_list.p50",
    "jobs.realtime_factor.value",
    "jobs.replica_wall_ratio.value",
    "jobs.rss_peak_bytes.value",
    "jobs.rss_growth.value",
    "jobs.upload_mb_per_s.value",
    "jobs.first_progress_seconds.value",
)


def lookup(figures: dict, path: str):
    node = figures
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def missing(results: dict) -> list[str]:
    return [path for path in REQUIRED if lookup(results.get("figures", {}), path) is None]


def _met(flag) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def markdown(results: dict) -> str:
    f = results["figures"]
    run = results["run"]
    rows: list[tuple[str, str, str, str]] = []  # figure, result, goal, met
    if "overhead" in f:
        for name, label in (
            ("photo_03mp_1face", "0.3 MP, 1 face"),
            ("photo_1080p_1face", "1080p, 1 face"),
            ("group_4k_10faces", "4K, 10 faces"),
        ):
            if name not in f["overhead"]:
                continue
            o = f["overhead"][name]
            rows.append(
                (
                    f"Mesh overhead, {label}: UploadMedia / raw engine",
                    f"p50 {o['mesh_ms']['p50']:.0f} / {o['raw_ms']['p50']:.0f} ms = "
                    f"**{o['ratio_p50']:.2f}x**; p99 {o['mesh_ms']['p99']:.0f} / "
                    f"{o['raw_ms']['p99']:.0f} ms = {o['ratio_p99']:.2f}x",
                    f"p50 ratio ≤ {o.get('goal_p50', 1.25)}",
                    _met(o["met"]),
                )
            )
    for name, c in f.get("causes", {}).items():
        if name == "method":
            continue
        top = [(cause, ms) for cause, ms in c["causes_ms_p50"].items() if cause != "wall"][:8]
        rows.append(
            (
                f"Where an upload's time goes, {name} (p50 ms per cause, traced uploads)",
                f"wall {c['mesh_wall_ms_p50']:.1f}, raw engine {c['raw_engine_ms_p50']:.1f}, "
                f"over the engine {c['over_the_engine_ms']:.1f}: "
                + "; ".join(f"{cause} {ms:.2f}" for cause, ms in top),
                "—",
                "—",
            )
        )
    if "profile" in f:
        p = f["profile"]
        overhead = f.get("overhead", {})
        hops = []
        for name, hop in p["hop_ms"].items():
            o = overhead.get(name)
            extra = o["mesh_ms"]["p50"] - o["raw_ms"]["p50"] if o else None
            share = f" = {100 * hop['bytes_p50'] / extra:.0f}% of its overhead" if extra else ""
            hops.append(
                f"{name} ({hop['bytes'] / 1000:.0f} kB): {hop['bytes_p50']:.2f} ms{share}; "
                f"store first {p['store_ms'][name]['p50']:.2f} ms"
            )
        rows.append(
            (
                "Media bytes over the gateway→matcher hop (p50), and the encrypted store a "
                "storage reference would put before the match",
                "; ".join(hops),
                "—",
                "—",
            )
        )
        for process in ("gateway", "matcher"):
            prof = p["profiles"].get(process, {})
            if prof.get("self"):
                rows.append(
                    (
                        f"py-spy, {process}, top self time ({prof['samples']} samples)",
                        "; ".join(line.strip() for line in prof["self"][:6]),
                        "—",
                        "—",
                    )
                )
    if "throughput" in f:
        t = f["throughput"]
        mesh = ", ".join(
            f"{c}: {v['images_per_s']:.2f} ({v['cores_busy']:.1f} cores)"
            for c, v in t["mesh"].items()
        )
        raw = ", ".join(
            f"{c}: {v['images_per_s']:.2f} ({v['cores_busy']:.1f} cores)"
            for c, v in t["raw"].items()
        )
        rows.append(
            (
                "Throughput, 1080p images/s by clients (mesh) / threads (raw)",
                f"mesh {mesh}; raw {raw}; best mesh / best raw = **{t['ratio_best']:.2f}**",
                "≥ 0.8 of raw",
                _met(t["met"]),
            )
        )
    if "search" in f:
        s = f["search"]
        largest = max(s["sizes"], key=int)
        for size, v in s["sizes"].items():
            top1 = "; ".join(
                f"at {cosine}: {t['exact']:.3f} / **{t['ann']:.3f}**"
                for cosine, t in v["top1_enrolled"].items()
            )
            rows.append(
                (
                    f"Search top-5, {int(size):,} faces: exact / {s['ann_kind']}",
                    f"p50 {v['exact_p50_ms']:.3f} / **{v['ann_p50_ms']:.3f} ms** "
                    f"({v['speedup_p50']:.1f}x); top-1 = enrolled face {top1}; memory "
                    f"{v['exact_bytes_per_face']:.0f} / **{v['ann_bytes_per_face']:.0f} B/face**; "
                    f"similarity error ≤ {v['similarity_max_abs_error']:.4f}; "
                    f"build {v['ann_build_s']:.1f} s",
                    "top-1 ≥ 0.99 at p50 ≤ 2 ms, ≤ 300 B/face" if size == largest else "—",
                    _met(v.get("met")),
                )
            )
        sweep = s["sizes"][largest].get("by_rerank_depth")
        if sweep:
            rows.append(
                (
                    f"Re-rank depth sweep, {int(largest):,} faces, cosine 0.55: top-1 / p50",
                    ", ".join(
                        f"{depth}: {v['recall_at_1']:.3f} / {v['p50_ms']:.2f} ms"
                        for depth, v in sweep.items()
                    ),
                    "—",
                    "—",
                )
            )
        if "updates" in s:
            u = s["updates"]
            rows.append(
                (
                    f"Index refresh after 1 enrollment / 1 deletion, {u['faces']:,} faces",
                    f"incremental {u['incremental_add_ms']:.1f} ms (first after the build; then "
                    f"{', '.join(f'{v:.1f}' for v in u.get('incremental_add_ms_next', []))} ms)"
                    f" / {u['incremental_remove_ms']:.1f} ms against a full rebuild of "
                    f"{u['full_rebuild_s']:.1f} s; first match after an enrollment on another "
                    f"replica at {u['refresh']['faces']:,} faces: "
                    f"{u['refresh']['refresh_after_enrollment_s'] * 1000:.0f} ms",
                    "no full rebuild",
                    "—",
                )
            )
    if "audit" in f:
        a = f["audit"]
        per_batch = ", ".join(
            f"{b}: {v['events_per_s']:,.0f}" for b, v in a["append"]["by_batch"].items()
        )
        rows.append(
            (
                "Audit append on PostgreSQL, events/s by batch size",
                f"{per_batch}; best **{a['append']['events_per_s']:,.0f} events/s**",
                "—",
                "—",
            )
        )
        sh = a["shred"]
        rows.append(
            (
                f"ShredTalentSalt, {sh['large_events']:,} / {sh['small_events']:,} events",
                f"p50 {sh['large_ms']['p50']:.2f} / {sh['small_ms']['p50']:.2f} ms = "
                f"**{sh['ratio']:.2f}x**",
                "ratio ≤ 1.2",
                _met(sh["met"]),
            )
        )
        p = a["purge"]
        rows.append(
            (
                f"PurgeExpired of {p['events']:,} expired events",
                f"**{p['seconds']:.1f} s** ({p['events_per_s']:,.0f} events/s); concurrent "
                f"appends p50/p99 {p['append_p50_ms_during']:.1f}/"
                f"**{p['append_p99_ms_during']:.1f} ms** (idle {p['append_p50_ms_idle']:.1f}/"
                f"{p['append_p99_ms_idle']:.1f} ms), longest {p['append_max_ms_during']:.0f} ms",
                p.get("goal", "writers not stalled"),
                _met(p["met"]),
            )
        )
        t = a.get("tree")
        if t:
            ap, pr, cp = t["append"], t["proof"], t["checkpoint"]
            rows += [
                (
                    f"Audit append of {ap['batch']} events with the Merkle tree / without it",
                    f"p50 {ap['with_tree_ms']['p50']:.1f} / {ap['without_tree_ms']['p50']:.1f} ms "
                    f"= **{ap['ratio']:.2f}x**",
                    ap["goal"],
                    _met(ap["met"]),
                ),
                (
                    f"Inclusion proof at {pr['leaves']:,} leaves ({pr['hashes']} hashes)",
                    f"p50 **{pr['ms']['p50']:.2f} ms**, p99 {pr['ms']['p99']:.2f} ms "
                    f"(tree built in {t['build_seconds']:.0f} s)",
                    pr["goal"],
                    _met(pr["met"]),
                ),
                (
                    f"Checkpoint at {cp['leaves']:,} leaves: the service's call / the signature",
                    f"p50 **{cp['ms']['p50']:.2f} ms** (p99 {cp['ms']['p99']:.2f}); the note's "
                    f"Ed25519 signature alone {cp['note_signature_ms']['p50']:.3f} ms",
                    cp["goal"],
                    _met(cp["met"]),
                ),
            ]
    if "video" in f:
        v = f["video"]
        e = v["end_to_end"]
        rows.append(
            (
                f"Video 720p, {e['video_seconds']:.0f} s at {e['rate_hz']:g} Hz, end to end",
                f"**{e['realtime_factor']:.1f}x real time** "
                f"({e['wall_seconds']['p50']:.1f} s wall; the matcher alone, alternated: "
                f"{e['in_process_realtime_factor']:.1f}x, so the mesh costs "
                f"{e['mesh_cost_ratio']:.2f}x)",
                "≥ 5x real time",
                _met(e["met"]),
            )
        )
        rates = ", ".join(f"{r} Hz: {x['realtime_factor']:.1f}x" for r, x in v["by_rate"].items())
        rows.append(("Video by sampling rate (matcher in-process)", rates, "—", "—"))
    if "startup" in f:
        st = f["startup"]
        rows.append(
            (
                "Start-up: `mixip up` until all five services SERVING",
                f"p50 **{st['seconds']['p50']:.1f} s** (n={st['seconds']['n']}); slowest "
                f"service {st['slowest_service']}",
                "—",
                "—",
            )
        )
        for name, label in (
            ("version", "`mixip --version`"),
            ("help", "`mixip --help`"),
            ("projects_list", "`mixip projects list` (a typical command, mesh running)"),
        ):
            c = st.get("cli", {}).get(name)
            if c:
                rows.append(
                    (
                        f"CLI start-up: {label}",
                        f"p50 **{c['p50']:.2f} s** wall, {c.get('cpu_p50', 0):.2f} s CPU "
                        f"(n={c['n']})",
                        f"< {c['goal_seconds']:g} s",
                        _met(c["met"]),
                    )
                )
    if "jobs" in f:
        j = f["jobs"]
        labels = {
            "realtime_factor": "Long video job, 1080p, one matcher: video s / job wall s",
            "replica_wall_ratio": "Job wall, two replicas pinned to a core each / one pinned",
            "rss_peak_bytes": "Matcher peak RSS (VmHWM) over the long job",
            "rss_growth": "Matcher peak RSS, long video / short video - 1",
            "upload_mb_per_s": "Upload by `mixip match --resumable-above 0`, MB/s",
            "resumed_fraction": "Upload killed at 50 %: bytes the resumed run sends / file",
            "first_progress_seconds": "Upload end to first WatchJob progress event, s",
        }
        for key, label in labels.items():
            figure = j[key]
            value = figure["value"]
            if key == "rss_peak_bytes":
                value = f"{value / 1024**3:.2f} GiB"
            rows.append(
                (
                    f"{label} ({j['video_minutes']:g} min)",
                    f"**{value}**",
                    figure["goal"],
                    _met(figure["met"]),
                )
            )
    lines = [
        f"Run of {run['started_at']} ({'smoke sizes' if run['smoke'] else 'full sizes'}), "
        f"{run['host'].get('cpus')} cores, load average {run['load_average_at_start']} at start, "
        f"{run.get('duration_seconds', 0):.0f} s.",
        "",
        "| Figure | Result | Goal | Met |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows),
        "",
    ]
    return "\n".join(lines)
