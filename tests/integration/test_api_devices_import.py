"""`pushsvc devices import`: CSV and JSONL through the API's validator into MongoDB, every bad line reported."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from pushsvc.cli import devices_import, main
from tests.integration.stack import Stack


def tok(i: int) -> str:
    return f"{i:064x}"


async def run_import(
    stack: Stack, file: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict, str]:
    stack.settings()  # writes config-0.yaml wired to this test's database
    config = stack.tmp_path / "config-0.yaml"
    code = await asyncio.to_thread(main, ["devices", "import", str(file), "--config", str(config), *extra])
    out, err = capsys.readouterr()
    return code, json.loads(out.strip().splitlines()[-1]), err


async def test_csv_import_validates_every_row_and_upserts_in_batches(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices_import, "_on_terminal", lambda: True)  # as a terminal: the progress bar too
    lines = ["app,token,platform,user_id,tags,locale,timezone,app_version,opt_out"]
    for i in range(250):
        lines.append(f"demo,{tok(i)},{'ios' if i % 2 else 'android'},user{i},fr;beta,fr-FR,Europe/Paris,1.0,promo")
    lines.append(f"demo,{tok(1)},ios,user1-again,,,,,")  # line 252: same token again -> updated
    lines.append(f"demo,{tok(999)},windows,u,,,,,")  # line 253: bad platform
    lines.append(f"demo,{tok(998)},ios,u,,,Mars/Base,,")  # line 254: bad timezone
    lines.append(f"other,{tok(997)},ios,u,,,,,")  # line 255: unknown app
    lines.append(f"demo,{tok(996)},ios,u,,,,,,extra")  # line 256: too many cells
    file = tmp_path / "devices.csv"
    file.write_text("\n".join(lines) + "\n")

    code, summary, err = await run_import(stack, file, capsys, "--batch-size", "100")
    assert code == 1  # some rows were rejected
    assert summary == {"rows": 255, "imported": 251, "inserted": 250, "updated": 1, "errors": 4}
    assert "line 253: platform:" in err
    assert "line 254: timezone:" in err
    assert "line 255: app:" in err
    assert "line 256: line:" in err
    assert "100.0%" in err  # the progress bar reached the end
    assert await stack.db.devices.count_documents({}) == 250
    doc = await stack.db.devices.find_one({"token": tok(2)})
    assert doc["tags"] == ["fr", "beta"] and doc["opt_out"] == ["promo"] and doc["timezone"] == "Europe/Paris"
    assert (await stack.db.devices.find_one({"token": tok(1)}))["user_id"] == "user1-again"


async def test_jsonl_import_reports_bad_json_and_fields(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [json.dumps({"app": "demo", "token": tok(i), "platform": "ios", "tags": ["a"]}) for i in range(5)]
    rows.insert(2, "{not json")
    rows.append(json.dumps({"app": "demo", "token": tok(50), "platform": "ios", "tags": "a"}))
    file = tmp_path / "devices.jsonl"
    file.write_text("\n".join(rows) + "\n")
    code, summary, err = await run_import(stack, file, capsys)
    assert code == 1
    assert summary["imported"] == 5 and summary["errors"] == 2
    assert "line 3: line: not valid JSON" in err
    assert "line 7: tags:" in err
    assert await stack.db.devices.count_documents({"app": "demo"}) == 5


async def test_every_platform_imports_and_a_web_subscription_is_checked_like_the_api(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.integration.test_device_platforms import web_subscription

    good = web_subscription()
    inside = web_subscription("https://169.254.169.254/latest")
    lines = [
        "app,token,platform,kind,activity_id,endpoint,p256dh,auth",
        f"demo,,web,,,{good['endpoint']},{good['keys']['p256dh']},{good['keys']['auth']}",
        f"demo,{tok(1)},huawei,,,,,",
        f"demo,{tok(2)},ios,apns_liveactivity,order-7,,,",
        f"demo,,web,,,{inside['endpoint']},{inside['keys']['p256dh']},{inside['keys']['auth']}",  # line 5: SSRF
        f"demo,{tok(3)},ios,apns_liveactivity,,,,",  # line 6: no activity id
        f"demo,,web,,,{good['endpoint']},,",  # line 7: no keys
    ]
    file = tmp_path / "devices.csv"
    file.write_text("\n".join(lines) + "\n")
    code, summary, err = await run_import(stack, file, capsys)
    assert code == 1
    assert summary["imported"] == 3 and summary["errors"] == 3
    assert "line 5: subscription.endpoint:" in err
    assert "line 6: activity_id:" in err
    assert "line 7: subscription.keys:" in err
    web = await stack.db.devices.find_one({"platform": "web"})
    assert web["kind"] == "webpush" and web["subscription"] == good and web["token"].startswith("web:")
    assert (await stack.db.devices.find_one({"token": tok(1)}))["kind"] == "hms"
    assert (await stack.db.devices.find_one({"token": tok(2)}))["activity_id"] == "order-7"
