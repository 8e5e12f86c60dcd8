"""The HTML report in headless Chromium: it renders with no console errors, and the fault band
and the gap sit where the history puts them on the time axis."""

from __future__ import annotations

from tests.unit.test_reports import _results


async def test_report_page_in_chromium(tmp_path, chromium):
    results = _results(tmp_path)
    page = await chromium.new_page(viewport={"width": 1100, "height": 700})
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto((results.dir / "report.html").as_uri())
    await page.screenshot(path=str(results.dir / "report.png"), full_page=True)
    assert not errors, errors
    # Positions in the drawn page: x = left + t / span * plot width, for t since the first op.
    geometry = await page.evaluate(
        """() => {
          const svg = document.querySelector('section.scenario svg');
          const box = (sel) => { const b = svg.querySelector(sel).getBBox(); return {x: b.x, width: b.width}; };
          const axis = [...svg.querySelectorAll('text.tick')];
          return {band: box('rect.fault'), gap: box('rect.gap'), width: svg.viewBox.baseVal.width,
                  ticks: axis.map(t => [t.textContent, t.getBBox().x])};
        }"""
    )
    left, right, span = 90, 20, 15.0  # html_report's margins; the history spans 1000..1015
    plot = geometry["width"] - left - right
    assert abs(geometry["band"]["x"] - (left + 6.0 / span * plot)) < 1.0
    assert abs(geometry["band"]["x"] + geometry["band"]["width"] - (left + 13.0 / span * plot)) < 1.0
    assert abs(geometry["gap"]["x"] - (left + 9.0 / span * plot)) < 1.0
    assert (results.dir / "report.png").stat().st_size > 10_000
