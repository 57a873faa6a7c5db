"""HTML main content by landmarks: navigation the page declares goes, the main landmark's text
stays, and nothing is judged by the words of an id or a class. Pages are generated here in the
shapes of the manuals the rule was measured on (Sphinx, PostgreSQL's DocBook)."""

from crawler.ingest.extract import extract_file
from crawler.ingest.formats import html_text

# ---------------------------------------------------------------------------------------------
# A Sphinx page, as Python's and the Linux kernel's manuals are built


def related_bar() -> str:
    return ('<div class="related" role="navigation" aria-label="related navigation"><h3>Navigation</h3>'
            '<ul><li class="right"><a href="genindex.html">index</a></li>'
            '<li class="right"><a href="next.html">next</a> |</li>'
            '<li><a href="index.html">Python</a> &#187;</li></ul></div>')


SPHINX = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8" /><title>shlex — Simple lexical analysis</title>
<script src="_static/doctools.js"></script></head>
<body>
<nav class="nav-content" role="navigation"><a href="index.html">Python 3.11 Documentation</a>
  <form role="search" class="search" action="search.html"><input type="text" name="q" /></form></nav>
{related_bar()}
<div class="document">
  <div class="documentwrapper">
    <div class="bodywrapper">
      <div class="body" role="main">
  <section id="module-shlex">
  <h1>shlex — Simple lexical analysis<a class="headerlink" href="#module-shlex">¶</a></h1>
  <p>The <code>shlex</code> class makes it easy to write lexical analyzers for simple syntaxes
  resembling that of the Unix shell.</p>
  <section id="related-functions">
  <h2>Related functions</h2>
  <ul><li><p>split a string using shell-like syntax.</p></li>
  <li><p>quote a string for a shell command line.</p></li></ul>
  <div class="highlight"><pre><span>&gt;&gt;&gt; </span>shlex.split('a "b c"')
[&#39;a&#39;, &#39;b c&#39;]
    indented   line</pre></div>
  </section>
  </section>
      </div>
    </div>
  </div>
  <div class="sphinxsidebar" role="navigation" aria-label="main navigation">
    <h3><a href="contents.html">Table of Contents</a></h3>
    <ul><li><a href="#">shlex — Simple lexical analysis</a></li>
      <li><a href="#related-functions">Related functions</a></li></ul>
    <div role="note" aria-label="source link"><h3>This Page</h3>
      <ul><li><a href="_sources/library/shlex.rst.txt">Show Source</a></li></ul></div>
  </div>
  <div class="clearer"></div>
</div>
{related_bar()}
<div class="footer">&copy; Copyright 2001-2024, Python Software Foundation.
  <p>Created using <a href="https://www.sphinx-doc.org/">Sphinx</a> 7.2.6.</p></div>
</body></html>"""

SPHINX_MAIN = """shlex — Simple lexical analysis¶

The shlex class makes it easy to write lexical analyzers for simple syntaxes resembling that of the Unix shell.

Related functions

split a string using shell-like syntax.

quote a string for a shell command line.

>>> shlex.split('a "b c"')
['a', 'b c']
    indented   line"""


def test_a_sphinx_page_is_its_main_text(tmp_path):
    path = tmp_path / "shlex.html"
    path.write_text(SPHINX, encoding="utf-8")
    assert extract_file(path).text == SPHINX_MAIN


def test_a_sphinx_page_without_its_main_role_still_loses_its_navigation():
    text = html_text(SPHINX.replace(' role="main"', ""))
    for chrome in ("Python 3.11 Documentation", "index", "next |", "Table of Contents", "Navigation"):
        assert chrome not in text.splitlines()
    # the sidebar's "This Page" note sits inside a navigation landmark; the footer is no landmark
    assert "Show Source" not in text
    assert text.startswith(SPHINX_MAIN) and "Created using Sphinx 7.2.6." in text


# ---------------------------------------------------------------------------------------------
# PostgreSQL's manual: DocBook XSL, XHTML, a navigation table above and below

POSTGRESQL = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!DOCTYPE html PUBLIC "-//W3C//DTD XHTML 1.0 Transitional//EN" "http://www.w3.org/TR/xhtml1/DTD/xhtml1-transitional.dtd">
<html xmlns="http://www.w3.org/1999/xhtml"><head><title>8.6. Boolean Type</title>
<link rel="stylesheet" type="text/css" href="stylesheet.css" /></head><body id="docContent" class="container-fluid col-10">
<div class="navheader"><table width="100%" summary="Navigation header"><tr><th colspan="5" align="center">8.6. Boolean Type</th></tr>
<tr><td width="10%" align="left"><a accesskey="p" href="datatype-datetime.html">Prev</a> </td>
<td width="10%" align="left"><a accesskey="u" href="datatype.html">Up</a></td>
<th width="60%" align="center">Chapter 8. Data Types</th>
<td width="10%" align="right"><a accesskey="h" href="index.html">Home</a></td>
<td width="10%" align="right"> <a accesskey="n" href="datatype-enum.html">Next</a></td></tr></table><hr /></div>
<div class="sect1" id="DATATYPE-BOOLEAN"><div class="titlepage"><div><div><h2 class="title" style="clear: both">8.6. Boolean Type</h2></div></div></div>
<p><span class="productname">PostgreSQL</span> provides the standard SQL type <code class="type">boolean</code>.</p>
<div class="table" id="DATATYPE-BOOLEAN-TABLE"><table class="table" summary="Boolean Data Type" border="1">
<colgroup><col /><col /></colgroup><thead><tr><th>Name</th><th>Storage Size</th></tr></thead>
<tbody><tr><td><code class="type">boolean</code></td><td>1 byte</td></tr></tbody></table></div>
<pre class="programlisting">CREATE TABLE test1 (a boolean, b text);
INSERT INTO test1 VALUES (TRUE, 'sic est');</pre>
</div><div class="navfooter"><hr /><table width="100%" summary="Navigation footer"><tr>
<td width="40%" align="left"><a accesskey="p" href="datatype-datetime.html">Prev</a> </td>
<td width="20%" align="center"><a accesskey="u" href="datatype.html">Up</a></td>
<td width="40%" align="right"> <a accesskey="n" href="datatype-enum.html">Next</a></td></tr>
<tr><td width="40%" align="left" valign="top">8.5. Date/Time Types </td>
<td width="20%" align="center"><a accesskey="h" href="index.html">Home</a></td>
<td width="40%" align="right" valign="top"> 8.7. Enumerated Types</td></tr></table></div></body></html>"""


def test_a_postgresql_page_loses_its_navigation_header_and_footer():
    assert html_text(POSTGRESQL) == """8.6. Boolean Type

PostgreSQL provides the standard SQL type boolean.

Name\tStorage Size
boolean\t1 byte

CREATE TABLE test1 (a boolean, b text);
INSERT INTO test1 VALUES (TRUE, 'sic est');"""


# ---------------------------------------------------------------------------------------------
# Pages that declare nothing, or too little


def test_a_page_without_landmarks_keeps_everything():
    page = ("<html><head><title>t</title></head><body><div id='top'>Home | About</div>"
            "<h1>Notes</h1><p>First   paragraph.</p><aside>An aside stays.</aside>"
            "<div class='footer'>Written by me</div></body></html>")
    assert html_text(page) == "Home | About\n\nNotes\n\nFirst paragraph.\n\nAn aside stays.\n\nWritten by me"


def test_an_empty_main_gives_way_to_the_whole_page():
    page = ("<body><nav><a href='/'>Home</a></nav><main>  <!-- filled by a script --> </main>"
            "<div class='content'><h1>Title</h1><p>The text.</p></div><footer>Footer</footer></body>")
    assert html_text(page) == "Title\n\nThe text.\n\nFooter"


def test_a_main_element_wins_over_a_main_role():
    page = ("<body><div role='main'><p>Outer intro.</p><main><p>Inner text.</p></main></div>"
            "<p>Outside.</p></body>")
    assert html_text(page) == "Inner text."
    assert html_text(page.replace("<main>", "<div>").replace("</main>", "</div>")) == "Outer intro.\n\nInner text."


def test_ids_and_classes_that_look_like_chrome_are_kept():
    # Sphinx makes ids of section titles; main-content libraries drop these sections by their words
    page = ("<body><div role='main'><section id='related-work'><h2>Related work</h2><p>Kept one.</p></section>"
            "<section id='hidden-files' class='hidden sidebar'><h2>Hidden files</h2><p>Kept two.</p></section>"
            "<div class='sphinxsidebar related'><p>Kept three.</p></div></div></body>")
    assert html_text(page) == "Related work\n\nKept one.\n\nHidden files\n\nKept two.\n\nKept three."


def test_navigation_left_unclosed_ends_with_its_parent():
    page = "<body><div><nav><a href='/'>Home</a></div><p>After the menu.</p><div role='search'>q</div></body>"
    assert html_text(page) == "After the menu."


def test_a_main_inside_navigation_is_not_the_page():
    page = "<body><nav><main>Menu</main></nav><p>Body text.</p></body>"
    assert html_text(page) == "Body text."


def test_a_block_ends_an_unclosed_paragraph_before_the_main_landmark():
    # a browser ends the <p> at <main>, so the stray </p> inside the main ends nothing
    page = "<body><p>Intro<main><h1>Title</h1>Text</p>more text</main><p>Outside</body>"
    assert html_text(page) == "Title\n\nText\n\nmore text"
