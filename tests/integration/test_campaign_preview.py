"""`GET /v1/campaigns/{id}/preview`: whom a campaign reaches now, per platform and per text (the localized
locale each device gets, as dispatch picks it), and what each platform's provider would get per text."""

from __future__ import annotations

import time

from pushsvc.scheduling.due import epoch_to_iso
from tests.integration.stack import Stack
from tests.integration.test_campaigns import api, campaign, token


async def test_preview_counts_the_audience_per_platform_and_text_as_it_is_now(stack: Stack) -> None:
    await stack.start()
    for i, locale in enumerate(["fr-FR", "fr_CA", "ja"]):
        await stack.register(token(i, "v"), "ios", tags=["promo"], locale=locale)
    await stack.register(token(10, "v"), "android", tags=["promo"], locale="pt-BR")  # no pt text: default
    await stack.register(token(11, "v"), "android", tags=["promo"])  # no locale: default
    await stack.register(token(12, "v"), "android", tags=["promo"], locale="fr", opt_out=["sale"])  # opted out
    await stack.register(token(13, "v"), "ios", tags=["other"], locale="fr")  # not in the segment
    body = campaign("autumn", schedule={"at": epoch_to_iso(time.time() + 3600)})
    body["message"] = {**body["message"], "category": "sale"}
    status, created = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 201, created

    status, preview = await api(stack, "GET", "/v1/campaigns/autumn/preview?app=demo")
    assert status == 200, preview
    assert preview["audience"] == {
        "total": 5,
        "by_platform": {"android": 2, "ios": 3},
        "by_locale": {"default": 2, "fr": 2, "ja": 1},
        "by_platform_and_locale": {"android": {"default": 2}, "ios": {"fr": 2, "ja": 1}},
    }
    assert preview["audience"]["total"] == created["progress"]["audience_estimate"]
    ios = preview["payloads"]["ios"]
    assert ios["fr"]["body"]["aps"]["alert"]["title"] == "Soldes"
    assert ios["ja"]["body"]["aps"]["alert"]["title"] == "セール"
    assert ios["default"]["body"]["aps"]["alert"]["title"] == "Sale"
    assert preview["payloads"]["android"]["fr"]["body"]["message"]["notification"]["title"] == "Soldes"

    # Computed at each call: a device registered since is in the next preview; nothing was sent.
    await stack.register(token(14, "v"), "ios", tags=["promo"], locale="ja-JP")
    status, again = await api(stack, "GET", "/v1/campaigns/autumn/preview?app=demo")
    assert again["audience"]["by_locale"] == {"default": 2, "fr": 2, "ja": 2} and again["audience"]["total"] == 6
    assert not stack.apns.requests and not stack.fcm.requests


async def test_preview_shows_every_variant_and_refuses_an_unreadable_campaign(stack: Stack) -> None:
    await stack.start()
    await stack.register(token(1, "p"), "ios", tags=["promo"], locale="fr-FR")
    body = campaign("split", schedule={"at": epoch_to_iso(time.time() + 3600)}, variants=[
        {"name": "A", "message": {"title": "A!", "localized": {"fr": {"title": "A fr"}}}},
        {"name": "B", "message": {"title": "B!"}},
    ])
    del body["message"]
    status, created = await api(stack, "POST", "/v1/campaigns", body)
    assert status == 201, created
    status, preview = await api(stack, "GET", "/v1/campaigns/split/preview?app=demo")
    assert status == 200 and set(preview["variants"]) == {"A", "B"}, preview
    assert preview["variants"]["A"]["ios"]["fr"]["body"]["aps"]["alert"]["title"] == "A fr"
    assert set(preview["variants"]["B"]["ios"]) == {"default"}  # B has no localized text
    assert preview["variants"]["B"]["ios"]["default"]["body"]["aps"]["alert"]["title"] == "B!"
    # A stored request this version cannot read (a hand edit): 409 saying why, not a 500.
    await stack.db.notifications.update_one({"_id": "demo:campaign:split"}, {"$set": {"request": "{not json"}})
    status, answer = await api(stack, "GET", "/v1/campaigns/split/preview?app=demo")
    assert status == 409 and "unreadable" in answer["error"]["message"], answer
